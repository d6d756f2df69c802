"""Which single feature per emotion, picked on the train passages only, holds up on the held-out
topics? Scores some alternatives to `emosae label`'s rule (best train AUROC) on several runs:
adding the decoder row's cosine with the emotion vector, keeping only positively aligned
features, the most frequent winner over bootstrap resamples, and the best-aligned of the top-N by
AUROC. Prints, per rule and run, the emotions at held-out AUROC >= 0.9 and the macro AUROC.

    python scripts/selection_rules.py RUN [RUN ...] [--vectors RUN/vectors]

Every run must be labeled at the same hook as the vectors (`emosae vectors --run RUN`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from features.vectors import vectors_for_hook  # noqa: E402
from labeling.aurocs import RankedScores, auroc, emotions_of, split_masks  # noqa: E402
from labeling.label import LabelSettings, corpus_rows, score_rows  # noqa: E402
from sae.layout import run_root  # noqa: E402


def rules(A: np.ndarray, C: np.ndarray, S: np.ndarray, y: np.ndarray, emos: list[str], rng) -> dict[str, np.ndarray]:
    """{rule: chosen feature per emotion} from train AUROCs A [E, d], cosines C [E, d], train scores S."""
    out = {"auroc (emosae label)": A.argmax(1)}
    for lam in (0.05, 0.1, 0.2, 0.4):
        out[f"auroc + {lam} cos"] = (A + lam * C).argmax(1)
    out["auroc, cos > 0 only"] = np.where(C > 0, A, -1).argmax(1)
    counts = np.zeros_like(A)
    for _ in range(100):
        idx = rng.integers(0, len(y), len(y))
        rs = RankedScores(S[idx])
        for i, e in enumerate(emos):
            pos, _, excl = split_masks(y[idx], e)
            counts[i, np.nan_to_num(rs.auroc(pos, excl), nan=0).argmax()] += 1
    out["bootstrap mode"] = counts.argmax(1)
    for n in (5, 20):
        top = np.argsort(-A, axis=1)[:, :n]
        out[f"best cos of top {n}"] = top[np.arange(len(emos)), np.take_along_axis(C, top, 1).argmax(1)]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--vectors", help="run whose vectors/ to use (default: each run's own)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rows = corpus_rows(None)
    y = np.array([r["emotion"] for r in rows])
    split = np.array([r.get("split", "train") for r in rows])
    tr, he = np.flatnonzero(split == "train"), np.flatnonzero(split == "heldout")
    emos = emotions_of(y[tr])
    lm, table = None, {}
    for run in args.runs:
        scores, ctx = score_rows(run, rows, LabelSettings(), lm)
        lm = ctx["lm"]
        names, mat, _ = vectors_for_hook(Path(args.vectors) if args.vectors else run_root(run), ctx["hook"])
        V = mat.float().numpy()
        V /= np.linalg.norm(V, axis=1, keepdims=True)
        W = ctx["sae"].W_dec.detach().float().numpy()
        W /= np.linalg.norm(W, axis=1, keepdims=True)
        S, H = scores[tr], scores[he]
        rs = RankedScores(S)
        A = np.nan_to_num(np.stack([rs.auroc(split_masks(y[tr], e)[0], split_masks(y[tr], e)[2]) for e in emos]))
        C = np.stack([W @ V[names.index(e)] for e in emos])
        table[run] = {}
        for name, chosen in rules(A, C, S, y[tr], emos, np.random.default_rng(args.seed)).items():
            h = []
            for e, f in zip(emos, chosen):
                pos, neg, _ = split_masks(y[he], e)
                h.append(float(auroc(H[pos][:, [int(f)]], H[neg][:, [int(f)]])[0]))
            table[run][name] = (int((np.array(h) >= 0.9).sum()), round(float(np.mean(h)), 3))
        print(run, json.dumps(table[run]), file=sys.stderr, flush=True)
    print(f"{'rule':24s}" + "".join(f"{Path(r).name[-12:]:>14s}" for r in args.runs) + "   mean n")
    for name in next(iter(table.values())):
        cells = "".join(f"{table[r][name][0]:>7d} {table[r][name][1]:.3f}" for r in args.runs)
        print(f"{name:24s}{cells}   {np.mean([table[r][name][0] for r in args.runs]):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
