"""The feature browser: `emosae browse RUN` serves a run's features on 127.0.0.1;
`--export DIR` writes the same site as static files that open from file://.

    from features.browser import export_site
    report = export_site("runs/demo", "runs/demo/browser")   # {"size_bytes", "n_files", ...}

Modules: rundata (read a run), blocks (the page data, bounded per feature), jsdata (data files as
escaped JS), site (the fixed set of site files), export, server, live (model-backed endpoints),
synthetic (fake runs for tests and benchmarks), static/ (the page: plain HTML, CSS and JS)."""

from __future__ import annotations

import argparse
import logging
import sys

from features.browser.blocks import Options
from features.browser.export import export_site

log = logging.getLogger("emosae")
__all__ = ["export_site", "serve", "Options", "register"]


def serve(run_dir, host: str = "127.0.0.1", port: int = 8000, model: str | None = None,
          options: Options | None = None, device: str = "cpu", background: bool = True):
    """A server for `run_dir`, listening; with `background` it already runs in a daemon thread
    (`.url`, `.shutdown()`), else call `.serve_forever()`."""
    from features.browser.rundata import load_run
    from features.browser.server import BrowserServer
    from features.browser.site import Site

    run = load_run(run_dir)
    # listen first: a port in use is reported before a model spends its seconds (or minutes) loading
    server = BrowserServer(Site(run, options, mode="server"), host, port)
    if model:
        from features.browser.live import Live

        try:
            live = Live(run_dir, model, device=device)
        except BaseException:
            server.shutdown()
            raise
        server.live = live
        server.site = Site(run, options, mode="server", live=live.caps())
    return server.start() if background else server


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("browse", help="browse a run's features in a web page (or --export a static site)")
    p.add_argument("run", help="run directory")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--export", metavar="DIR", default=None, help="write a static site to DIR instead of serving")
    p.add_argument("--model", nargs="?", const="auto", default=None, metavar="SPEC",
                   help="load a model for the 'fires on this text' box and the clamp playground "
                        "(no SPEC: the model recorded in the SAE)")
    p.add_argument("--device", default=None, help="device for --model (default cpu)")
    p.add_argument("--block-size", type=int, default=Options.block_size, help="features per data file")
    p.add_argument("--max-contexts", type=int, default=Options.max_top, help="top contexts kept per feature")
    p.add_argument("--samples-per-bin", type=int, default=Options.max_per_bin, help="quantile samples kept per bin")
    p.add_argument("--json", action="store_true", help="print the export report (or the server URL) as JSON")
    p.set_defaults(func=_browse)


def _browse(args: argparse.Namespace) -> int:
    from sae.cli import flags, print_json, typed
    from sae.errors import UserError

    if args.block_size < 1 or args.max_contexts < 0 or args.samples_per_bin < 0:
        raise UserError("--block-size must be >= 1 and --max-contexts, --samples-per-bin >= 0")
    opts = Options(block_size=args.block_size, max_top=args.max_contexts, max_per_bin=args.samples_per_bin)
    if args.port is not None and not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port} is not a port; give 1..65535 (or 0 for a free one)")
    if args.device is not None and not args.model:  # said, not silently ignored
        raise UserError("--device is where --model runs; add --model or drop --device")
    if args.export is not None:
        if not args.export.strip():
            raise UserError("--export needs a folder name, e.g. --export site")
        if args.model:
            raise UserError("--model needs a server; a static export has no model (drop --model or --export)")
        given = flags(typed(args, "host", "port"))
        if given:
            raise UserError(f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} for the server, and a static "
                            f"export does not listen (drop {' and '.join(given)} or --export)")
        report = export_site(args.run, args.export, opts)
        if args.json:
            print_json(report)
        else:
            print(f"exported {report['n_features']} features: {report['size_bytes'] / 1e6:.1f} MB in "
                  f"{report['n_files']} files; first load {report['first_load_bytes'] / 1e3:.0f} kB\n"
                  f"open {report['entry']}", file=sys.stderr)
        return 0
    server = serve(args.run, "127.0.0.1" if args.host is None else args.host, 8000 if args.port is None else args.port,
                   args.model, opts, args.device or "cpu", background=False)
    if args.json:
        print_json({"url": server.url, "host": server.host, "port": server.port})
    print(f"emosae browse: serving {args.run} at {server.url} (Ctrl-C stops)", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("emosae browse: stopped", file=sys.stderr)
    finally:
        server.shutdown()
    return 0
