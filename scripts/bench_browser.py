"""Browser scale benchmark: a synthetic 16,384-feature run, exported, opened from file:// in
headless Chromium. Reports export size (raw and gzip), page weight, export time, and time to
first render of the feature list, against a baseline measured in the same run: the same index
data rendered as one plain <table> of every row (what a page without virtual scrolling does).

    .venv/bin/python scripts/bench_browser.py [--features 16384] [--run RUN] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features.browser import export_site  # noqa: E402
from features.browser.synthetic import make_synthetic_run  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

BASELINE_HTML = """<!doctype html><meta charset="utf-8"><title>baseline</title>
<script src="static/baseline.js"></script><script src="data/site.js"></script><script src="data/index.js"></script>
<body><table id="t"></table></body>"""
BASELINE_JS = """window.D = {}; window.EMOSAE_register = function (k, key, d) { window.D[k] = d; };
document.addEventListener("DOMContentLoaded", function () {
  const ix = window.D.index, t = document.getElementById("t");
  for (let i = 0; i < ix.n; i++) {
    const tr = document.createElement("tr");
    const vals = ["#" + i, ix.label[i] >= 0 ? ix.labels[ix.label[i]] : "-", ix.score[i], ix.auroc[i], ix.heldout[i], ix.density[i], ix.max_act[i]];
    for (const v of vals) { const td = document.createElement("td"); td.textContent = String(v); tr.appendChild(td); }
    t.appendChild(tr);
  }
  requestAnimationFrame(function () { window.EMOSAE_FIRST_RENDER = performance.now(); });
});"""


def gz_size(root: Path) -> int:
    return sum(len(gzip.compress(p.read_bytes(), 6)) for p in root.rglob("*") if p.is_file())


def first_render(browser, url: str, feature: bool = False) -> dict:
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_function("window.EMOSAE_FIRST_RENDER !== undefined", timeout=300_000)  # the baseline is slow
    # first render is stamped in the page (performance.now(), i.e. ms since navigation start);
    # the paint that follows is waited for so the number includes layout.
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    out = {"first_render_ms": page.evaluate("window.EMOSAE_FIRST_RENDER"),
           "dom_nodes": page.evaluate("document.getElementsByTagName('*').length")}
    if feature:
        t0 = time.perf_counter()
        page.locator(".vrow").first.click()
        page.wait_for_selector("#top-contexts .tok, #feature-title", timeout=60_000)
        out["feature_page_ms"] = (time.perf_counter() - t0) * 1000
    if errors:
        raise RuntimeError(f"page errors: {errors}")
    page.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=16384)
    ap.add_argument("--run", default=None, help="an existing run instead of a synthetic one")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="emosae-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        run = Path(args.run) if args.run else make_synthetic_run(tmp / "run", d_sae=args.features, d_in=64, images=True)
        t_make = time.perf_counter() - t0
        report = export_site(run, tmp / "site")
        site = Path(report["out_dir"])
        gz = gz_size(site)
        (site / "baseline.html").write_text(BASELINE_HTML)
        (site / "static" / "baseline.js").write_text(BASELINE_JS)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            ours = [first_render(browser, (site / "index.html").as_uri(), feature=True) for _ in range(args.repeats)]
            base = [first_render(browser, (site / "baseline.html").as_uri()) for _ in range(args.repeats)]
            browser.close()
    med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
    out = {
        "n_features": report["n_features"], "synthetic_run_s": round(t_make, 1), "export_s": report["seconds"],
        "export_bytes": report["size_bytes"], "export_gzip_bytes": gz, "n_files": report["n_files"],
        "bytes_per_feature": report["bytes_per_feature"], "first_load_bytes": report["first_load_bytes"],
        "index_bytes": report["index_bytes"], "max_block_bytes": report["max_block_bytes"],
        "feature_page_weight_bytes": report["first_load_bytes"] + report["max_block_bytes"],
        "first_render_ms": round(med(ours, "first_render_ms"), 1),
        "feature_page_ms": round(med(ours, "feature_page_ms"), 1),
        "list_dom_nodes": ours[0]["dom_nodes"],
        "baseline_full_table_first_render_ms": round(med(base, "first_render_ms"), 1),
        "baseline_dom_nodes": base[0]["dom_nodes"],
    }
    out["speedup_vs_full_table"] = round(out["baseline_full_table_first_render_ms"] / out["first_render_ms"], 2)
    out["first_render_within_1s"] = out["first_render_ms"] < 1000
    if args.json:
        print(json.dumps(out))
    else:
        w = max(len(k) for k in out)
        for k, v in out.items():
            print(f"{k:<{w}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
