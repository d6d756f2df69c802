"""`emosae browse RUN`: a local HTTP server for one run (stdlib http.server).

It answers only the site's own file names (see site.Site.paths): a path is percent-decoded once
and looked up in that fixed set, so `/../../etc/passwd` and every encoding of it is a 404 and the
file system is never consulted. It binds 127.0.0.1 by default. With a model, two JSON endpoints
(`/api/fire`, `/api/clamp`) accept only same-origin JSON POSTs addressed to this host, which a
foreign web page cannot send (CORS preflight, Host check against DNS rebinding)."""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from sae.errors import UserError

from features.browser.jsdata import js_literal
from features.browser.site import Site

log = logging.getLogger("emosae")
MAX_BODY = 100_000
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def site_path(raw: str) -> str | None:
    """The site-relative name a request path asks for, or None (-> 404) when it cannot be one."""
    path = urlsplit(raw).path
    if not path.startswith("/") or "\\" in path:
        return None
    try:
        path = unquote(path, errors="strict")
    except UnicodeDecodeError:
        return None
    if "\x00" in path or "/." in path or "//" in path:
        return None
    return path[1:] or "index.html"


class _Handler(BaseHTTPRequestHandler):
    server_version = "emosae"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    @property
    def app(self) -> "BrowserServer":
        return self.server.app  # type: ignore[attr-defined]

    def log_message(self, fmt, *args):  # noqa: A003 - stdlib name
        log.debug("browse: %s - %s", self.address_string(), fmt % args)

    def _send(self, status: int, body: bytes, ctype: str, head_only: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("Cache-Control", "no-cache")
        if self.command == "POST" and not getattr(self, "_body_read", False):
            self.send_header("Connection", "close")  # an unread body must not be parsed as the next request
            self.close_connection = True
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def _not_found(self, head_only: bool = False) -> None:
        self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8", head_only)

    def _json(self, status: int, obj) -> None:
        self._send(status, js_literal(obj).encode("utf-8", errors="backslashreplace"), "application/json; charset=utf-8")

    def do_GET(self, head_only: bool = False) -> None:  # noqa: N802 - stdlib name
        rel = site_path(self.path)
        data = self.app.site.get(rel) if rel is not None else None
        if data is None:
            return self._not_found(head_only)
        self._send(HTTPStatus.OK, data, self.app.site.content_type(rel), head_only)

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET(head_only=True)

    def do_POST(self) -> None:  # noqa: N802
        rel = site_path(self.path)
        live = self.app.live
        if live is None or rel not in ("api/fire", "api/clamp"):
            return self._not_found()
        if not self.app.host_allowed(self.headers.get("Host", "")):
            return self._json(HTTPStatus.FORBIDDEN, {"error": "unexpected Host header"})
        origin = self.headers.get("Origin")
        if origin is not None and origin != f"http://{self.headers.get('Host', '')}":
            return self._json(HTTPStatus.FORBIDDEN, {"error": "cross-origin request refused"})
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            return self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "send application/json"})
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = -1
        if not 0 < n <= MAX_BODY:
            return self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body must be 1..{MAX_BODY} bytes"})
        try:
            raw = self.rfile.read(n)
            self._body_read = True
            req = json.loads(raw.decode("utf-8"))
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError):
            return self._json(HTTPStatus.BAD_REQUEST, {"error": "body is not a JSON object"})
        try:
            out = live.fire(req) if rel == "api/fire" else live.clamp(req)
        except UserError as e:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        except Exception as e:  # keep serving; the page shows the message
            log.exception("browse: %s failed", rel)
            return self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(e).__name__}: {e}"[:500]})
        self._json(HTTPStatus.OK, out)


class _ThreadingHTTPServer6(ThreadingHTTPServer):
    """For an IPv6 --host (`::1`, `::`): the stdlib server binds IPv4 sockets only."""

    address_family = socket.AF_INET6


class BrowserServer:
    """A running server; `url` to open, `shutdown()` to stop (it runs in a daemon thread unless
    `serve_forever()` is called)."""

    def __init__(self, site: Site, host: str = "127.0.0.1", port: int = 8000, live=None):
        self.site = site
        self.live = live
        if not 0 <= port <= 65535:
            raise UserError(f"--port {port} is not a port; give 1..65535 (or 0 for a free one)")
        server_cls = _ThreadingHTTPServer6 if ":" in host else ThreadingHTTPServer
        try:
            self.httpd = server_cls((host, port), _Handler)
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port or --host") from None
        self.httpd.daemon_threads = True
        self.httpd.app = self  # type: ignore[attr-defined]
        self.host = host
        self.port = self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}/"

    def host_allowed(self, header: str) -> bool:
        if not _is_loopback(self.host):
            return True  # the user chose to expose it
        names = {"localhost", "127.0.0.1", "[::1]", self.host}
        return header in {f"{n}:{self.port}" for n in names}

    def start(self) -> "BrowserServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="emosae-browse", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def shutdown(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=5)
        self.httpd.server_close()
