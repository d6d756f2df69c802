"""Write the corpus the CPU demo's SAE trains on: the general corpus with the emotion corpus's
*train* passages (emotional stories and neutral ones) spread evenly through it.

Why: an SAE learns features for what its data holds. On the general corpus alone the demo SAE gave
7/30 emotions a held-out AUROC >= 0.9; with the train passages mixed in, 12/30 (same config, same
seed, same held-out topics). The held-out passages never enter: their topics are the labels' test.

Deterministic (seeded shuffle, gzip without a timestamp), so the shipped file can be checked:
    .venv/bin/python scripts/make_sae_corpus.py --out labeling/data/sae_corpus.jsonl.gz
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labeling.corpus import load_corpus  # noqa: E402
from sae.io import atomic_path  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "labeling" / "data"


def mixed_rows(general: Path, seed: int = 0) -> list[dict]:
    """General documents in order, the shuffled train passages placed evenly between them."""
    with gzip.open(general, "rt", encoding="utf-8") as f:
        docs = [{"text": json.loads(line)["text"], "source": "general"} for line in f if line.strip()]
    stories = [{"text": r["text"], "source": f"emotion-corpus:train:{r['emotion']}"}
               for r in load_corpus(split="train")]
    random.Random(seed).shuffle(stories)
    out, j, step = [], 0, len(docs) / max(len(stories), 1)
    for i, doc in enumerate(docs):
        out.append(doc)
        while j < len(stories) and j * step <= i:
            out.append(stories[j])
            j += 1
    return out + stories[j:]


def write(rows: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
            for r in rows:
                gz.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--general", default=str(DATA / "general_corpus.jsonl.gz"))
    ap.add_argument("--out", default=str(DATA / "sae_corpus.jsonl.gz"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = mixed_rows(Path(args.general), args.seed)
    write(rows, Path(args.out))
    n = sum(r["source"] != "general" for r in rows)
    print(f"{args.out}: {len(rows)} documents ({n} emotion-corpus train passages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
