"""Dose-response through the monitor: the paper's parametric scenarios (a quantity told to the
assistant at log-spaced values; a harmless quantity as control), each emotion's feature and
vector read at the assistant's turn opening, Spearman's rho against the value, and a plot.
Used by `scripts/dose_response.py` and `emosae demo`."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from sae.errors import UserError

TEMPLATES = Path(__file__).resolve().parent.parent / "labeling" / "data" / "dose_templates.jsonl"
HIGHLIGHT = ("afraid", "calm", "terrified", "nervous", "desperate", "peaceful")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def load_templates(path: str | Path | None = None) -> list[dict]:
    """Template rows: {name, parameter, unit, template with {value}, values, expect, control}."""
    from sae.io import read_jsonl

    src = path or TEMPLATES
    rows = read_jsonl(src, required=("name", "template", "values"))
    seen: set[str] = set()
    for i, r in enumerate(rows, 1):
        # checked here, before any model loads; the name becomes a file name (dose_<name>.png)
        name = r["name"]
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise UserError(f"{src}: template {i}: name {name!r} must be letters, digits, '_', '-' or '.' "
                            "(it names the plot file)")
        if name in seen:
            raise UserError(f"{src}: template name {name!r} is used twice; give each template its own name")
        seen.add(name)
        if not isinstance(r["template"], str) or "{value}" not in r["template"]:
            raise UserError(f"template {name!r} has no {{value}} placeholder")
        vals = r["values"]
        if not isinstance(vals, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 and math.isfinite(v) and v > 0 for v in vals):
            raise UserError(f"template {name!r}: values must be a list of positive numbers (plotted on a log axis)")
        if len(vals) < 3:
            raise UserError(f"template {name!r} needs at least 3 values for a rank correlation")
        if not isinstance(r.get("expect") or {}, dict):
            raise UserError(f"template {name!r}: expect must be an object {{emotion: +1|-1}}")
    return rows


def fmt_value(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def prompts(template: dict, tokenizer) -> list[str]:
    """One chat-rendered user message per value."""
    from features.monitor import chat_text

    # replace, not str.format: a template may hold other braces ("{...}", JSON) as plain text
    return [chat_text(tokenizer, [{"role": "user", "content": template["template"].replace("{value}", fmt_value(v))}])
            for v in template["values"]]


def spearman(x, y) -> float | None:
    from scipy.stats import spearmanr

    y = np.asarray(y, dtype=np.float64)
    if len(y) < 3 or np.any(~np.isfinite(y)) or np.ptp(y) == 0:
        return None
    return round(float(spearmanr(x, y).statistic), 4)


def dose_response(mon, templates: list[dict], position: str = "last") -> dict:
    """{"templates": [{name, values, series: {kind: {emotion: [..]}}, rho: {kind: {emotion: rho}}}]}."""
    out = []
    for t in templates:
        scores = mon.score(prompts(t, mon.lm.tokenizer), position=position)
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
            # rho is undefined (null) for a flat series, e.g. a feature that never fires at that token
            entry.setdefault("flat", {})[kind] = [e for e, v in series.items()
                                                  if None not in v and max(v) == min(v)]
        out.append(entry)
    return {"hook": mon.hook, "position": position, "skip_tokens": mon.skip_tokens, "templates": out}


def plot(entry: dict, path: Path, position: str = "last") -> Path:
    """Each emotion against the value (log x), one panel per kind; highlighted emotions in colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sae.io import atomic_path

    kinds = list(entry["series"])
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.5 * len(kinds), 4.6), squeeze=False)
    marked = [e for e in (*(entry.get("expect") or {}), *HIGHLIGHT)]  # "expect" may be absent (None)
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
        ax.set_title(f"{entry['name']}{' (control)' if entry.get('control') else ''}: {kind}, {position} over tokens")
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
