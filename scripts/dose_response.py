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

import numpy as np

from sae.errors import UserError

log = logging.getLogger("emosae")
TEMPLATES = Path(__file__).resolve().parent.parent / "labeling" / "data" / "dose_templates.jsonl"
HIGHLIGHT = ("afraid", "calm", "terrified", "nervous", "desperate", "peaceful")


def load_templates(path: str | Path | None = None) -> list[dict]:
    """Template rows: {name, parameter, unit, template with {value}, values, expect, control}."""
    from labeling.corpus import read_jsonl

    rows = read_jsonl(path or TEMPLATES, required=("name", "template", "values"))
    for r in rows:
        if "{value}" not in r["template"]:
            raise UserError(f"template {r['name']!r} has no {{value}} placeholder")
        if len(r["values"]) < 3:
            raise UserError(f"template {r['name']!r} needs at least 3 values for a rank correlation")
    return rows


def fmt_value(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def prompts(template: dict, tokenizer) -> list[str]:
    """One chat-rendered user message per value."""
    from features.monitor import chat_text

    return [chat_text(tokenizer, [{"role": "user", "content": template["template"].format(value=fmt_value(v))}])
            for v in template["values"]]


def spearman(x, y) -> float | None:
    from scipy.stats import spearmanr

    y = np.asarray(y, dtype=np.float64)
    if len(y) < 3 or np.any(~np.isfinite(y)) or np.ptp(y) == 0:
        return None
    return round(float(spearmanr(x, y).statistic), 4)


def dose_response(mon, templates: list[dict]) -> dict:
    """{"templates": [{name, values, series: {kind: {emotion: [..]}}, rho: {kind: {emotion: rho}}}]}."""
    out = []
    for t in templates:
        scores = mon.score(prompts(t, mon.lm.tokenizer), position="last")
        entry = {k: t.get(k) for k in ("name", "parameter", "unit", "template", "values", "expect", "control")}
        entry["series"], entry["rho"] = {}, {}
        for kind in ("features", "vectors"):
            names = list(scores[0][kind]) if scores else []
            if not names:
                continue
            series = {e: [s[kind][e] for s in scores] for e in names}
            entry["series"][kind] = series
            entry["rho"][kind] = {e: spearman(t["values"], [np.nan if x is None else x for x in v])
                                  for e, v in series.items()}
        out.append(entry)
    return {"hook": mon.hook, "position": "last", "skip_tokens": mon.skip_tokens, "templates": out}


def plot(entry: dict, path: Path) -> Path:
    """Each emotion against the value (log x), one panel per kind; highlighted emotions in colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sae.io import atomic_path

    kinds = list(entry["series"])
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.5 * len(kinds), 4.6), squeeze=False)
    marked = [e for e in (*entry.get("expect", {}), *HIGHLIGHT)]
    for ax, kind in zip(axes[0], kinds):
        series, rho = entry["series"][kind], entry["rho"][kind]
        show = list(dict.fromkeys(e for e in marked if e in series))
        for e, ys in series.items():
            if e not in show:
                ax.plot(entry["values"], ys, color="0.8", lw=0.8, zorder=1)
        for i, e in enumerate(show):
            r = rho.get(e)
            ax.plot(entry["values"], series[e], marker="o", lw=1.8, color=f"C{i}", zorder=2,
                    label=f"{e} (rho {r:+.2f})" if r is not None else e)
        ax.set_xscale("log")
        ax.set_xlabel(f"{entry.get('parameter') or 'value'} ({entry.get('unit') or ''})")
        ax.set_ylabel("feature activation" if kind == "features" else "projection on emotion vector")
        ax.set_title(f"{entry['name']}{' (control)' if entry.get('control') else ''}: {kind}, last token")
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


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
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print dose_response.json on stdout")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    for noisy in ("transformers", "datasets", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        from sae.io import write_json_atomic

        templates = load_templates(args.templates)
        mon = build_monitor(args)
        doc = dose_response(mon, templates)
        out = Path(args.out) if args.out else Path(args.vectors or args.run or "runs/demo") / "dose_response"
        out.mkdir(parents=True, exist_ok=True)
        for entry in doc["templates"]:
            entry["png"] = str(plot(entry, out / f"dose_{entry['name']}.png"))
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
    print(f"Spearman rho vs value at {doc['hook']}, last token (skip_tokens={doc['skip_tokens']})")
    head = f"{'template':16s} {'kind':9s}" + "".join(f"{e:>11s}" for e in shown) + "   expected"
    print(head)
    for t in doc["templates"]:
        for kind, rho in t["rho"].items():
            cells = "".join(f"{'n/a' if rho.get(e) is None else format(rho[e], '+.3f'):>11s}" for e in shown)
            exp = "control" if t.get("control") else ", ".join(f"{e} {'+' if s > 0 else '-'}" for e, s in (t.get("expect") or {}).items())
            print(f"{t['name']:16s} {kind:9s}{cells}   {exp}")
    print(f"plots and dose_response.json in {out}")


if __name__ == "__main__":
    sys.exit(main())
