"""Harvest into the disk cache: model -> batches -> masked activations -> shards + manifest."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm

from sae.cache import MANIFEST, CacheWriter
from sae.data import token_batches
from sae.errors import UserError
from sae.harvest import harvest
from sae.hooks import parse_hook
from sae.io import output_dir
from sae.models import load_model

log = logging.getLogger("emosae")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def harvest_to_cache(model: str, hooks: list[str], dataset: str, out: str, tokens: int | None = None,
                     context_size: int = 256, token_budget: int = 4096, outlier_mult: float | None = 10.0,
                     dtype: str = "float32", device: str | None = None, text_field: str = "text",
                     lm=None) -> dict:
    """Write a complete cache to `out` (built in a temp dir, renamed at the end)."""
    torch.set_flush_denormal(True)
    lm = lm or load_model(model, device or default_device())
    for h in hooks:
        parse_hook(h, lm.model)
    out_dir = output_dir(out)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).exists():
        raise UserError(f"--out {out_dir} exists and is not an activation cache (no {MANIFEST}); "
                        "give a new folder (an existing cache there is replaced)")
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    meta = {"model_id": lm.model_id, "provenance": lm.provenance, "dataset": dataset,
            "outlier_mult": outlier_mult, "text_field": text_field}
    writer = CacheWriter(tmp, meta, hooks, context_size, dtype)
    t0 = time.time()
    bar = tqdm(total=tokens, unit="tok", desc="harvest", disable=None)
    for chunk in harvest(lm.model, lm.tokenizer, token_batches(dataset, lm.tokenizer, context_size, token_budget,
                                                                 text_field, tokens), hooks, outlier_mult):
        writer.add(chunk)
        bar.update(chunk.batch.n_tokens)
    bar.close()
    manifest = writer.close()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    log.info("harvested %d masked tokens (%d rows) in %.1fs into %s", manifest["n_tokens"], manifest["n_rows"],
             time.time() - t0, out_dir)
    return {**manifest, "directory": str(out_dir.resolve())}
