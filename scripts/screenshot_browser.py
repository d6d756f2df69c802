"""Screenshot a run's feature page (for docs/ and the README): exports the run to a temporary
folder, opens it from file:// in headless Chromium and saves a PNG.

    .venv/bin/python scripts/screenshot_browser.py RUN docs/browser_feature.png [--feature ID]

Without --feature it shows the labeled feature with the highest label score."""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features.browser import export_site  # noqa: E402
from sae.io import atomic_path  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def best_feature(run: Path) -> int:
    labels = json.loads((run / "labels.json").read_text()) if (run / "labels.json").exists() else {}
    scored = [(v.get("score") or -math.inf, -int(k)) for k, v in (labels.get("features") or {}).items()
              if isinstance(v, dict) and v.get("label") and isinstance(v.get("score"), (int, float))]
    return -max(scored)[1] if scored else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("out")
    ap.add_argument("--feature", type=int, default=None)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=1500, help="height of the saved image (px)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    run = Path(args.run)
    feature = args.feature if args.feature is not None else best_feature(run)
    with tempfile.TemporaryDirectory(prefix="emosae-shot-") as tmp:
        rep = export_site(run, Path(tmp) / "site")
        url = Path(rep["entry"]).as_uri() + f"#/feature/{feature}"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(url)
            page.wait_for_selector("#feature-title")
            page.wait_for_load_state("networkidle")
            with atomic_path(args.out) as tmp_png:
                page.screenshot(path=str(tmp_png), type="png", full_page=False)
            browser.close()
    print(json.dumps({"out": str(Path(args.out).resolve()), "feature": feature, "url": url}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
