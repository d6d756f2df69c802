"""Dose-response: does an emotion's representation track how dangerous a stated quantity is?

The paper's parametric scenarios (labeling/data/dose_templates.jsonl): a user tells the assistant
a quantity (an acetaminophen dose in mg, hours without food, days a dog has been missing, months
of startup runway) at log-spaced values; a harmless quantity (pages of a book read) is the
control. Each prompt is a user message rendered with the model's chat template, scored at the
last token (the assistant's turn opening, `--position last`), for each emotion's labeled SAE
feature and its emotion vector (features.monitor). Prints Spearman's rho of each emotion against
the value per template, the control's included; plots each emotion against the value.

    python scripts/dose_response.py --run runs/demo                     # features and vectors
    python scripts/dose_response.py --vectors VECDIR [--layer 15]       # vectors only (no SAE)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from features.dose import HIGHLIGHT, TEMPLATES, dose_response, load_templates, plot  # noqa: F401 (re-exported)
from sae.errors import UserError


def build_monitor(args):
    import torch

    from features.monitor import Monitor
    from labeling.scoring import default_device
    from sae.models import load_model

    torch.set_flush_denormal(True)
    emotions = None if args.emotions in (None, "all") else args.emotions.split(",")
    if args.vectors:
        lm = load_model(args.model, args.device or default_device())
        return Monitor.from_vectors(lm, args.vectors, args.layer, emotions)
    run = args.run or "runs/demo"
    if not Path(run).exists():
        raise UserError(f"run {run} does not exist; give --run RUN, or --vectors DIR for vectors only")
    return Monitor.from_run(run, emotions, model=args.model if args.model != "smollm2-135m" else None,
                            device=args.device, require_vectors=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=None, help="run with labels.json and vectors/ (default runs/demo)")
    p.add_argument("--vectors", default=None, help="a vectors dir instead of a run (vectors only)")
    p.add_argument("--layer", type=int, default=None, help="with --vectors: the layer (default: its best)")
    p.add_argument("--model", default="smollm2-135m", help="with --vectors: the model")
    p.add_argument("--templates", default=None, help=f"template JSONL (default {TEMPLATES.name})")
    p.add_argument("--emotions", default="all", help="comma-separated emotions, or all")
    p.add_argument("--out", default=None, help="where plots and dose_response.json go (default RUN/dose_response)")
    p.add_argument("--position", default="last", choices=("last", "mean", "max"),
                   help="reduce over the prompt's kept tokens (default last: the assistant's turn opening)")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print dose_response.json on stdout")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    for noisy in ("transformers", "datasets", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        from sae.io import output_dir, write_json_atomic

        # a flag that the chosen source cannot use is an error, not silently dropped
        if args.vectors and args.run:
            raise UserError("give --run RUN (features and vectors) or --vectors DIR (vectors only), not both")
        if args.layer is not None and not args.vectors:
            raise UserError("--layer picks the layer of a --vectors dir; a run is read at its SAE's hook: drop --layer")
        output_dir(args.out)
        templates = load_templates(args.templates)
        mon = build_monitor(args)
        doc = dose_response(mon, templates, args.position)
        from sae.layout import run_root

        src = Path(args.vectors) if args.vectors else run_root(args.run or "runs/demo")
        out = Path(args.out) if args.out else src / "dose_response"
        out.mkdir(parents=True, exist_ok=True)
        for entry in doc["templates"]:
            entry["png"] = str(plot(entry, out / f"dose_{entry['name']}.png", args.position))
        write_json_atomic(out / "dose_response.json", doc)
    except UserError as e:
        print(f"dose_response: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        print_table(doc, out)
    return 0


def print_table(doc: dict, out: Path) -> None:
    """Spearman rho per template for the expected emotions (and afraid/calm), feature and vector."""
    shown = list(dict.fromkeys(["afraid", "calm", *[e for t in doc["templates"] for e in (t.get("expect") or {})]]))
    print(f"Spearman rho vs value at {doc['hook']}, position {doc['position']} (skip_tokens={doc['skip_tokens']})")
    head = f"{'template':16s} {'kind':9s}" + "".join(f"{e:>11s}" for e in shown) + "   expected"
    print(head)
    for t in doc["templates"]:
        for kind, rho in t["rho"].items():
            flat = set((t.get("flat") or {}).get(kind, []))
            cells = "".join(f"{_cell(rho.get(e), e in flat):>11s}" for e in shown)
            exp = "control" if t.get("control") else ", ".join(f"{e} {'+' if s > 0 else '-'}" for e, s in (t.get("expect") or {}).items())
            print(f"{t['name']:16s} {kind:9s}{cells}   {exp}")
    print("flat: the value never changes there (e.g. a feature that does not fire), so rho is undefined")
    print(f"plots and dose_response.json in {out}")


def _cell(rho: float | None, flat: bool) -> str:
    return "flat" if flat else "n/a" if rho is None else format(rho, "+.3f")


if __name__ == "__main__":
    sys.exit(main())
