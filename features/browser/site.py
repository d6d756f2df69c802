"""The site as a fixed set of named files: the page, its script and style, and data files.

The server and the static export share this: the server answers only the names `paths()` lists
(anything else is a 404, so no request can reach the file system), and the export writes exactly
those files. Feature blocks are built when first asked for, so a server starts at once."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from importlib import resources
from pathlib import Path

from features.browser import blocks
from features.browser.jsdata import js_register
from features.browser.rundata import RunData

STATIC = ("index.html", "static/app.js", "static/app.css", "static/icon.svg")
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".png": "image/png",
                 ".svg": "image/svg+xml"}
_BLOCK = re.compile(r"data/f/(\d{4,6})\.js")


def static_bytes(name: str) -> bytes:
    """A file shipped in the package under features/browser/static/."""
    base = resources.files("features.browser") / "static"
    return (base / name.removeprefix("static/")).read_bytes()


def block_path(b: int) -> str:
    return f"data/f/{b:04d}.js"


class Site:
    def __init__(self, run: RunData, opts: blocks.Options | None = None, mode: str = "export",
                 live: dict | None = None, cache_blocks: int = 64):
        self.run = run
        self.opts = opts or blocks.Options()
        self.mode = mode
        self.live = live
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cache_size = cache_blocks
        self._lock = threading.Lock()
        self.n_blocks = blocks.n_blocks(run, self.opts)

    def paths(self) -> list[str]:
        out = list(STATIC) + ["data/site.js", "data/index.js", "data/emotions.js", "data/run.js"]
        out += [f"assets/{name}" for name in sorted(self.run.images)]
        out += [block_path(b) for b in range(self.n_blocks)]
        return out

    def content_type(self, path: str) -> str:
        return CONTENT_TYPES.get(Path(path).suffix, "application/octet-stream")

    def get(self, path: str) -> bytes | None:
        """The bytes of one site file, or None when `path` is not one of the site's names."""
        if path in STATIC:
            return static_bytes(path)
        if path.startswith("assets/"):
            src = self.run.images.get(path.removeprefix("assets/"))
            return src.read_bytes() if src is not None else None
        m = _BLOCK.fullmatch(path)
        if m:
            b = int(m.group(1))
            if b >= self.n_blocks or path != block_path(b):
                return None
            return self._cached(path, lambda: js_register("block", b, blocks.feature_block(self.run, b, self.opts)))
        builders = {
            "data/site.js": lambda: js_register("site", 0, blocks.site_info(self.run, self.opts, self.mode, self.live)),
            "data/index.js": lambda: js_register("index", 0, blocks.index_data(self.run), parse=True),
            "data/emotions.js": lambda: js_register("emotions", 0, blocks.emotions_data(self.run, self.opts)),
            "data/run.js": lambda: js_register("run", 0, blocks.run_data(self.run)),
        }
        if path in builders:
            return self._cached(path, builders[path], keep=True)
        return None

    def _cached(self, key: str, build, keep: bool = False) -> bytes:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        data = build()
        with self._lock:
            self._cache[key] = data
            if not keep:
                blocks_cached = [k for k in self._cache if k.startswith("data/f/")]
                for k in blocks_cached[: max(0, len(blocks_cached) - self._cache_size)]:
                    del self._cache[k]
        return data
