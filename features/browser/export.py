"""Static export: the site written as plain files that open from any static host or file://.

Written into a temporary folder beside the target and swapped in with renames, so a failed export
never leaves half a site; an existing folder is replaced only if an earlier export wrote it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from sae.errors import UserError
from sae.io import usual_mode

from features.browser.blocks import Options
from features.browser.rundata import load_run
from features.browser.site import STATIC, Site

log = logging.getLogger("emosae")
MARKER = "emosae-site.json"
FIRST_LOAD = ("index.html", "static/app.js", "static/app.css", "data/site.js", "data/index.js")


def _check_target(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        raise UserError(f"{out} exists and is not an emosae export; choose a new or empty folder for --export")
    cwd, real = Path.cwd(), out.resolve()
    if real == cwd or real in cwd.parents:  # the swap renames `out` away, and the shell would sit in a deleted folder
        raise UserError(f"--export {out} is the current folder (or holds it); give a new folder such as {out / 'site'}")


def _temp_dir(out: Path) -> Path:
    """An empty folder beside `out` to build the site in, with the permissions a plain mkdir
    gives (mkdtemp makes it 0700, which a static host running as another user cannot read)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise UserError(f"cannot create the export folder {out} ({e.strerror}); choose another --export folder") from None
    usual_mode(tmp, 0o777)
    return tmp


def write_site(site: Site, out_dir: str | os.PathLike) -> dict:
    """Write every file of `site` under `out_dir`; returns sizes (bytes) and counts."""
    out = Path(os.path.abspath(Path(out_dir).expanduser()))  # "." and ".." have no name to swap by
    _check_target(out)
    t0 = time.perf_counter()
    tmp = _temp_dir(out)
    sizes: dict[str, int] = {}
    try:
        for rel in site.paths():
            data = site.get(rel)
            if data is None:
                continue
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            sizes[rel] = len(data)
        block_sizes = [v for k, v in sizes.items() if k.startswith("data/f/")]
        report = {
            "out_dir": str(out.resolve()), "n_features": site.run.d_sae, "n_files": len(sizes) + 1,
            "size_bytes": sum(sizes.values()), "first_load_bytes": sum(sizes.get(k, 0) for k in FIRST_LOAD),
            "index_bytes": sizes.get("data/index.js", 0), "static_bytes": sum(sizes.get(k, 0) for k in STATIC),
            "n_blocks": len(block_sizes), "block_size": site.opts.block_size,
            "max_block_bytes": max(block_sizes, default=0),
            "mean_block_bytes": int(sum(block_sizes) / len(block_sizes)) if block_sizes else 0,
            "bytes_per_feature": round(sum(sizes.values()) / max(site.run.d_sae, 1), 1),
        }
        (tmp / MARKER).write_text(json.dumps({"run": str(site.run.dir.resolve()), **report}, indent=2) + "\n")
        report["size_bytes"] += (tmp / MARKER).stat().st_size
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    report["seconds"] = round(time.perf_counter() - t0, 3)
    report["entry"] = str((out / "index.html").resolve())
    return report


def export_site(run_dir: str | os.PathLike, out_dir: str | os.PathLike, options: Options | None = None) -> dict:
    """Export the browser for `run_dir` into `out_dir` (works from file://). Returns
    {"size_bytes", "n_files", "first_load_bytes", "max_block_bytes", "n_features", ...}."""
    run = load_run(run_dir)
    report = write_site(Site(run, options, mode="export"), out_dir)
    log.info("browse: exported %d features to %s (%.1f MB, %d files)", run.d_sae, report["out_dir"],
             report["size_bytes"] / 1e6, report["n_files"])
    return report
