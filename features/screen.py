"""`emosae screen`: which of an emotion's candidate features actually steers behaviour.

A feature that *detects* an emotion well (high AUROC) need not *move* the model's output: on the
demo SAE the best "sad" detector lifts VADER valence when clamped, while its third-ranked feature
lowers it. So before a steering experiment, screen: the top labeled and the best decoder-aligned
features of some emotions, each clamped at one strength on a screening prompt set (shipped,
disjoint from the sweep's evaluation prompts), scored by VADER shift and perplexity against one
shared baseline. The pick is the candidate with the largest shift in the wanted direction whose
perplexity stays under `max_ppl_ratio`. With `pairs=N`, the N best single candidates are also
screened two at a time, at the same nominal edit norm (each feature's strength scaled so the sum of
the two edits has the single's norm): related features pushing the same way add their effects,
while the norm, which is what a random direction's damage grows with, stays fixed. Report the
pick's effect on the *evaluation* prompts, never the screening ones: the pick was chosen on them,
so their numbers are biased upward."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from sae.errors import UserError

log = logging.getLogger("emosae")
SCREEN_PROMPTS = Path(__file__).resolve().parent.parent / "labeling" / "data" / "screen_prompts.jsonl"
# One summed edit norm for every candidate, a fifth of the mean residual norm: on the demo SAE random
# directions at 0.25r lowered VADER by 0.16 on average (four seeds, screening prompts), at ~0.2r by
# 0.02, so a stronger edit mostly measures damage.
DEFAULT_STRENGTH = "0.2r"
DEFAULT_PAIRS = 3  # pairs of the 3 best singles: both demo groups steered best with a pair
MAX_PPL_RATIO = 3.0
# Candidates per emotion. Labels whose train AUROCs are near-ties swap rank between SAEs trained on
# different CPUs, so a narrow list can miss the best lever: on one demo SAE, 3 labeled + 2 aligned
# missed happy's #5 (2938) and the eval sweep of the pick gave +0.30; 5 + 3 found 2938+3961, +0.45.
DEFAULT_TOP = 5
DEFAULT_ALIGNED = 3


def candidates(labels: dict, emotions: Sequence[str], top: int = DEFAULT_TOP,
               aligned: int = DEFAULT_ALIGNED) -> list[tuple[int, str]]:
    """[(feature, why)] in order: each emotion's `top` labeled features, then its `aligned`
    best decoder-aligned ones; a feature named twice is screened once."""
    ranked, near = labels.get("emotions") or {}, labels.get("aligned") or {}
    unknown = [e for e in emotions if e not in ranked]
    if unknown:
        from features.clamp import nearest

        raise UserError(f"labels.json has no emotion {unknown[0]!r}; nearest: {nearest(unknown[0], sorted(ranked))}")
    out: dict[int, str] = {}
    for e in emotions:
        for i, r in enumerate((ranked.get(e) or [])[:top]):
            out.setdefault(int(r["feature"]), f"{e} label #{i + 1}")
        for i, r in enumerate((near.get(e) or [])[:aligned]):
            out.setdefault(int(r["feature"]), f"{e} aligned #{i + 1}")
    return list(out.items())


def ranked(rows: list[dict], sign: int, max_ppl_ratio: float = MAX_PPL_RATIO) -> list[dict]:
    """Rows that moved valence the wanted way under the perplexity bound, furthest first."""
    ok = [r for r in rows if r.get("delta") is not None and (r.get("ppl_ratio") or float("inf")) < max_ppl_ratio
          and sign * r["delta"] > 0]
    return sorted(ok, key=lambda r: -sign * r["delta"])


def pair_strength(strength: str, w_dec, a: int, b: int) -> str:
    """Per-feature strength for clamping features a and b together so that the summed nominal edit
    (both features silent: s * (unit row a + unit row b)) has the norm of one edit at `strength`."""
    from features.units import Strength, parse_strength

    s = parse_strength(strength)
    if s.unit != "r":
        raise UserError(f"pairs are screened at a residual-norm strength like 0.2r, not {strength}")
    ua, ub = (w_dec[i].float() / w_dec[i].float().norm() for i in (a, b))
    return str(Strength(float(f"{s.value / float((ua + ub).norm()):.4g}"), "r"))


def pick(rows: list[dict], sign: int, max_ppl_ratio: float = MAX_PPL_RATIO) -> dict | None:
    """The screened row with the largest shift in direction `sign` among those under the
    perplexity bound; None when no candidate moves valence that way at all."""
    ok = ranked(rows, sign, max_ppl_ratio)
    return ok[0] if ok else None


def screen(run_dir: str | Path, emotions: Sequence[str], sign: int, strength: str = DEFAULT_STRENGTH,
           top: int = DEFAULT_TOP, aligned: int = DEFAULT_ALIGNED,
           prompts: str | Path | Sequence[str] | None = None, samples: int = 4,
           max_ppl_ratio: float = MAX_PPL_RATIO, pairs: int = DEFAULT_PAIRS, lm=None, baselines: dict | None = None,
           **sweep_kw) -> dict:
    """Screen the candidates of `emotions` at `strength` (set mode), then pairs of the `pairs` best,
    all against one baseline (`baselines`: pass one dict to several screens to share it too);
    {"emotions", "sign", "strength", "candidates": [{feature (int, or [a, b] for a pair), why,
    emotion, strength, delta, ppl_ratio, ...}], "pick": feature | [a, b] | None, "pick_strength",
    "settings"}."""
    from features.sweep import run_sweeps
    from features.units import parse_strength
    from labeling.label import read_labels
    from sae.layout import run_root

    if sign not in (1, -1):
        raise UserError(f"sign must be + or -, not {sign!r}")
    if parse_strength(strength).is_zero:
        raise UserError("the screening strength must be non-zero, e.g. 0.25r")
    run = run_root(run_dir)
    cands = candidates(read_labels(run), emotions, top, aligned)
    if not cands:
        raise UserError(f"labels.json ranks no feature for {', '.join(emotions)}; run `emosae label {run}` first")
    if pairs == 1 or pairs < 0:
        raise UserError(f"pairs must be 0 (singles only) or >= 2, not {pairs}")
    if pairs and parse_strength(strength).unit != "r":  # before the singles, not after minutes of them
        raise UserError(f"pairs are screened at a residual-norm strength like 0.2r, not {strength}; "
                        "give --strength in r units or --pairs 0")
    kw = dict(prompts=prompts or SCREEN_PROMPTS, samples=samples, control="none", out_dir=False, examples=0, kl=False,
              baselines={} if baselines is None else baselines, **sweep_kw)
    results = run_sweeps(run, [str(f) for f, _ in cands], ["0", strength], lm=lm, **kw)
    # why is "<emotion> label #i" or "<emotion> aligned #i"; the emotion may be several words ("worn out")
    rows = [_row(feature, why, why.rsplit(" ", 2)[0], res) for (feature, why), res in zip(cands, results)]
    if pairs:
        from itertools import combinations

        from features.clamp import load_run

        w_dec = load_run(run).sae.W_dec.detach()
        duos = list(combinations(ranked(rows, sign, max_ppl_ratio)[:pairs], 2))
        if duos:  # one shared baseline, each pair at its own per-feature strength
            results = run_sweeps(run, [f"{a['feature']}+{b['feature']}" for a, b in duos], ["0"], lm=lm,
                                 target_strengths=[["0", pair_strength(strength, w_dec, a["feature"], b["feature"])]
                                                   for a, b in duos], **kw)
            rows += [_row([a["feature"], b["feature"]], f"pair {a['why']} + {b['why']}", a["emotion"], res)
                     for (a, b), res in zip(duos, results)]
    best = pick(rows, sign, max_ppl_ratio)
    settings = {**results[0]["settings"], "max_ppl_ratio": max_ppl_ratio,
                "prompt_set": str(prompts) if isinstance(prompts, (str, Path)) else
                ("shipped " + SCREEN_PROMPTS.name if prompts is None else "given"), "pairs": pairs}
    return {"emotions": list(emotions), "sign": sign, "strength": strength, "candidates": rows,
            "pick": best["feature"] if best else None, "pick_strength": best["strength"] if best else None,
            "settings": settings}


def _row(feature, why: str, emotion: str, res: dict) -> dict:
    from features.units import parse_strength

    r = next(r for r in res["rows"] if not parse_strength(r["strength"]).is_zero)
    return {"feature": feature, "why": why, "emotion": emotion, "label": res.get("label"), "strength": r["strength"],
            "delta": r["delta"], "delta_lo": r["delta_lo"], "delta_hi": r["delta_hi"],
            "ppl_ratio": r["ppl_ratio"], "kl": r["kl"]}


def target_name(feature) -> str:
    """The sweep target for a screened feature or pair: "2905" or "2905+1167"."""
    return "+".join(str(f) for f in feature) if isinstance(feature, list) else str(feature)


def table(doc: dict) -> str:
    from features.sweep import _fmt

    head = f"{'feature':>10} {'strength':>8} {'why':<40} {'delta [95% CI]':>22} {'ppl x':>6}"
    lines = [f"screen {', '.join(doc['emotions'])} ({'+' if doc['sign'] > 0 else '-'}) at {doc['strength']}",
             head, "-" * len(head)]
    for r in doc["candidates"]:
        mark = " <- pick" if r["feature"] == doc["pick"] else ""
        ci = f"{_fmt(r['delta'])} [{_fmt(r['delta_lo'])}, {_fmt(r['delta_hi'])}]"
        lines.append(f"{target_name(r['feature']):>10} {r['strength']:>8} {r['why'][:40]:<40} {ci:>22} "
                     f"{_fmt(r['ppl_ratio'], '.2f'):>6}{mark}")
    if doc["pick"] is None:
        lines.append("no candidate moved valence that way under the perplexity bound")
    return "\n".join(lines)


def _sign(text: str) -> int:
    t = str(text).strip().lower()
    if t in ("+", "+1", "1", "up", "positive"):
        return 1
    if t in ("-", "-1", "down", "negative"):
        return -1
    raise argparse.ArgumentTypeError(f"--sign must be + or -, not {text!r}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("screen", help="which labeled features of some emotions move valence when clamped (pick one to sweep)")
    p.add_argument("run", help="run directory with labels.json")
    p.add_argument("--emotions", required=True, help="comma-separated emotions whose features are candidates")
    p.add_argument("--sign", type=_sign, required=True, help="+ (raise valence) or - (lower it)")
    p.add_argument("--strength", default=DEFAULT_STRENGTH, help=f"one non-zero strength (default {DEFAULT_STRENGTH})")
    p.add_argument("--top", type=int, default=DEFAULT_TOP, help=f"labeled features per emotion (default {DEFAULT_TOP})")
    p.add_argument("--aligned", type=int, default=DEFAULT_ALIGNED,
                   help=f"decoder-aligned features per emotion (default {DEFAULT_ALIGNED})")
    p.add_argument("--prompts", default=None, help=f"JSONL with a \"prompt\" per line (default: the shipped {SCREEN_PROMPTS.name})")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--max-ppl-ratio", type=float, default=MAX_PPL_RATIO)
    p.add_argument("--pairs", type=int, default=DEFAULT_PAIRS,
                   help=f"also screen pairs of the N best singles, at the same total edit norm (default {DEFAULT_PAIRS}; 0 = singles only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=40, help="tokens generated per sample (default 40)")
    p.add_argument("--batch-size", type=int, default=128, help="rows per generate() call")
    p.add_argument("--model", default=None, help="model spec (default: the SAE's model)")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print the screen document on stdout; the table goes to stderr")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    from sae.cli import print_json

    emotions = [e.strip() for e in args.emotions.split(",") if e.strip()]
    if not emotions:
        raise UserError("--emotions is empty; name at least one emotion, e.g. --emotions sad,afraid")
    if args.top < 0 or args.aligned < 0 or args.top + args.aligned == 0:
        raise UserError("--top and --aligned must be >= 0 and not both 0")
    doc = screen(args.run, emotions, args.sign, args.strength, args.top, args.aligned, args.prompts, args.samples,
                 args.max_ppl_ratio, args.pairs, seed=args.seed, max_new_tokens=args.max_new_tokens,
                 batch_size=args.batch_size, model=args.model, device=args.device)
    print(table(doc), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print_json(doc)
    return 0
