"""Measure the `skip_tokens` rule (labeling.scoring.DEFAULT_SKIP) on the embedded model.

For each candidate skip: emotion vectors by the paper's recipe (features.vectors.make_vectors)
from the train split with per-passage means over kept tokens at positions >= skip, scored on the
held-out topics (macro AUROC of projections, emotions >= 0.9). Also prints the median residual
norm per position over the corpus relative to the median of all kept tokens: how far the first
tokens after the (masked) attention sink sit from typical tokens. One forward, from the passage
cache (`--cache-dir`, default a folder under ~/.cache/emosae), so reruns are instant.

    python scripts/skip_tokens.py --layer 15
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import numpy as np
    import torch

    from features.vectors import make_vectors, neutral_pcs
    from labeling.aurocs import emotion_aurocs
    from labeling.corpus import NEUTRAL, emotions, load_corpus
    from labeling.scoring import DEFAULT_SKIP, passage_tokens, reduce_tokens
    from sae.models import cache_root, load_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--skips", default="0,1,2,4,8,16,32")
    p.add_argument("--cache-dir", default=None)
    args = p.parse_args()
    torch.set_flush_denormal(True)
    lm = load_model(args.model)
    rows = load_corpus()
    hook = f"blocks.{args.layer}.hook_resid_post"
    cache = Path(args.cache_dir) if args.cache_dir else cache_root() / "passages"
    pt = passage_tokens(lm, [r["text"] for r in rows], hook, cache_dir=cache)
    em = np.array([r["emotion"] for r in rows])
    split = np.array([r["split"] for r in rows])
    tr, ho = np.flatnonzero(split == "train"), np.flatnonzero(split == "heldout")
    emos = emotions(rows)

    norms = pt.acts.float().norm(dim=1)
    med = float(norms.median())
    prof = {int(q): round(float(norms[pt.position == q].median()) / med, 3) for q in range(1, 9)}
    print(f"layer {args.layer}: median norm by position / median of all kept tokens: {prof}")
    print(f"{'skip':>4s} {'kept tokens':>11s} {'held-out macro AUROC':>20s} {'emotions >= 0.9':>15s}")
    out = []
    for skip in [int(s) for s in args.skips.split(",")]:
        means = reduce_tokens(pt, None, skip, "mean")
        keep = (pt.position >= skip)
        neutral_tr = torch.from_numpy(np.isin(pt.passage.numpy(), tr[em[tr] == NEUTRAL])) & keep
        x = pt.acts[neutral_tr].double()
        pcs = neutral_pcs(x.T @ x, x.sum(0), x.shape[0], 0.5)
        v = make_vectors(means[tr], em[tr].tolist(), emos, pcs)
        proj = (means[ho] @ v.T).numpy()
        res = emotion_aurocs({e: proj[:, i] for i, e in enumerate(emos)}, em[ho], n_boot=0)
        frac = float(keep.float().mean())
        print(f"{skip:4d} {frac:11.3f} {res['macro_auroc']:20.4f} {res['n_at_threshold']:15d}")
        out.append({"skip": skip, "kept_fraction": round(frac, 4), "macro_auroc": res["macro_auroc"],
                    "n_at_0.9": res["n_at_threshold"]})
    print(f"DEFAULT_SKIP = {DEFAULT_SKIP}")
    print(json.dumps({"layer": args.layer, "norm_profile": prof, "skips": out}))


if __name__ == "__main__":
    main()
