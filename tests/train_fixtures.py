"""Helpers for the training tests: a small cache of real activations of the embedded model
(harvested once per session, shared by every test module through a fixed path under pytest's base
temp dir) and tiny configs that train on it."""

from __future__ import annotations

import json
from pathlib import Path

from sae.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "labeling" / "data" / "corpus" / "neutral.jsonl"
HOOK = "blocks.15.hook_resid_post"
CTX, TOKENS, HELDOUT = 128, 4096, 1024


def real_cache(lm, base: Path) -> Path:
    """Held-out + training activations at HOOK for the first tokens of the shipped neutral corpus."""
    from sae.train_data import HELDOUT_FILE, harvest_heldout, harvest_train_cache, train_part

    d = base / "train_cache"
    part = train_part(d, 0, 1)
    if (d / HELDOUT_FILE).exists() and (part / "manifest.json").exists():
        return d
    data = tiny_config(d).data
    harvest_heldout(lm, data, [HOOK]).save(d / HELDOUT_FILE)
    harvest_train_cache(lm, data, [HOOK], part, 0, 1, progress=False)
    assert json.loads((part / "manifest.json").read_text())["n_tokens"] > 3000
    return d


def tiny_yaml(cache: Path, sae: str = "sae: {arch: topk, d_sae: 512, k: 8}", **train) -> str:
    t = {"batch_size": 256, "warmup_steps": 2, "dead_tokens": 2048, "checkpoint_every_tokens": 1024,
         "eval_every_steps": 8, "ce_eval": False, "threads": 1, **train}
    return (f"model: {{name: smollm2-135m}}\n"
            f"data: {{dataset: {CORPUS}, context_size: {CTX}, token_budget: 1024, tokens: {TOKENS}, "
            f"heldout_tokens: {HELDOUT}, cache: {cache}, shuffle: true}}\n"
            f"{sae}\n"
            f"train: {json.dumps(t)}\n"
            f"log: {{progress: false, every_steps: 2}}\n")


def tiny_config(cache: Path, sae: str = "sae: {arch: topk, d_sae: 512, k: 8}", overrides=None, **train) -> Config:
    p = Path(cache).parent / f"cfg-{abs(hash((str(cache), sae, json.dumps(train, sort_keys=True))))}.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(tiny_yaml(cache, sae, **train))
    return load_config(p, overrides)
