"""A sharded on-disk activation cache, written once and read back in random order.

Layout: `manifest.json` (model and provenance, hooks, dtype, context size, token count, shards) and
`shard_NNNNN.safetensors`, each holding `acts.<hook>` [n, d], `index` [n] (flat token position in
the corpus: row * context_size + t) and the packed `rows` [r, context_size] it came from, so token
contexts can be rebuilt. The writer holds one shard in memory; the reader one shard at a time, so
peak memory does not grow with the cache."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sae.errors import UserError
from sae.harvest import ActivationChunk
from sae.io import atomic_path, read_json, write_json_atomic

MANIFEST = "manifest.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CacheWriter:
    def __init__(self, directory: str | Path, meta: dict, hooks: list[str], context_size: int,
                 dtype: str = "float32", shard_tokens: int = 65536):
        if dtype not in DTYPES:
            raise UserError(f"unknown cache dtype {dtype!r}; use one of {', '.join(DTYPES)}")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.meta, self.hooks, self.context_size = meta, hooks, context_size
        self.dtype, self.shard_tokens = dtype, shard_tokens
        self.shards: list[dict] = []
        self.n_tokens = 0
        self.n_rows = 0
        self._acts: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
        self._index: list[torch.Tensor] = []
        self._rows: list[torch.Tensor] = []
        self._docs: list[torch.Tensor] = []  # segment ids per token, so contexts stop at document ends
        self._pending = 0

    def add(self, chunk: ActivationChunk) -> None:
        rows = chunk.batch.input_ids
        offset = self.n_rows * self.context_size
        for h in self.hooks:
            self._acts[h].append(chunk.acts[h].to(DTYPES[self.dtype]).cpu())
        self._index.append(chunk.index.to(torch.int64) + offset)
        self._rows.append(rows.to(torch.int32))
        self._docs.append(chunk.batch.doc_ids.to(torch.int64).cpu())
        self.n_rows += rows.shape[0]
        self._pending += chunk.n
        if self._pending >= self.shard_tokens:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        name = f"shard_{len(self.shards):05d}.safetensors"
        tensors = {f"acts.{h}": torch.cat(v) for h, v in self._acts.items()}
        tensors["index"] = torch.cat(self._index)
        tensors["rows"] = torch.cat(self._rows)
        tensors["doc_ids"] = torch.cat(self._docs)
        with atomic_path(self.dir / name) as tmp:
            save_file(tensors, str(tmp))
        self.shards.append({"file": name, "n": self._pending,
                            "row_offset": self.n_rows - tensors["rows"].shape[0]})
        self.n_tokens += self._pending
        self._acts = {h: [] for h in self.hooks}
        self._index, self._rows, self._docs, self._pending = [], [], [], 0

    def close(self) -> dict:
        self._flush()
        manifest = {**self.meta, "hooks": self.hooks, "dtype": self.dtype, "context_size": self.context_size,
                    "n_tokens": self.n_tokens, "n_rows": self.n_rows, "shards": self.shards,
                    "complete": True, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json_atomic(self.dir / MANIFEST, manifest)
        return manifest


@dataclass
class ActivationCache:
    directory: Path
    manifest: dict

    @classmethod
    def open(cls, directory: str | Path) -> "ActivationCache":
        d = Path(directory)
        if not (d / MANIFEST).exists() and (d / "train" / MANIFEST).exists():
            d = d / "train"  # a training run's data.cache: its training activations (docs/formats.md)
        if not (d / MANIFEST).exists():
            parts = sorted(p.parent for p in [*d.glob(f"rank*of*/{MANIFEST}"), *(d / "train").glob(f"rank*of*/{MANIFEST}")])
            if parts:  # torchrun harvested it: one part per rank, each with its own token rows
                raise UserError(f"{d} was harvested by {len(parts)} ranks (torchrun), one cache per rank; "
                                f"pass one of them, e.g. --cache {parts[0]}")
            raise UserError(f"no activation cache in {d} (no {MANIFEST}); harvest it first")
        m = read_json(d / MANIFEST)
        if not m.get("complete"):
            raise UserError(f"activation cache {d} is incomplete; delete it and harvest again")
        return cls(d, m)

    @property
    def n_tokens(self) -> int:
        return self.manifest["n_tokens"]

    @property
    def hooks(self) -> list[str]:
        return self.manifest["hooks"]

    def shard(self, i: int, keys: list[str] | None = None) -> dict[str, torch.Tensor]:
        with safe_open(str(self.directory / self.manifest["shards"][i]["file"]), "pt") as f:
            return {k: f.get_tensor(k) for k in (keys or f.keys())}

    def iter_shards(self, hooks: list[str] | None = None, order: list[int] | None = None,
                    with_rows: bool = False) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        hooks = hooks or self.hooks
        keys = [f"acts.{h}" for h in hooks] + ["index"] + (["rows"] if with_rows else [])
        for i in order if order is not None else range(len(self.manifest["shards"])):
            yield i, self.shard(i, keys)

    def iter_batches(self, batch_size: int, generator: torch.Generator, hooks: list[str] | None = None,
                     start: tuple[int, int] = (0, 0), epoch_seed: int | None = None
                     ) -> Iterator[tuple[dict[str, torch.Tensor], tuple[int, int]]]:
        """Random order: a seeded shard order, rows permuted within each shard. Yields each batch
        and the position after it ((shard slot, row)), so a checkpoint can resume exactly there."""
        hooks = hooks or self.hooks
        n_shards = len(self.manifest["shards"])
        order = torch.randperm(n_shards, generator=generator).tolist()
        slot0, row0 = start
        for slot in range(slot0, n_shards):
            i = order[slot]
            data = self.shard(i, [f"acts.{h}" for h in hooks])
            n = data[f"acts.{hooks[0]}"].shape[0]
            g = torch.Generator().manual_seed((epoch_seed or 0) * 1_000_003 + i)
            perm = torch.randperm(n, generator=g)
            begin = row0 if slot == slot0 else 0
            for b in range(begin, n - batch_size + 1, batch_size):
                idx = perm[b:b + batch_size]
                yield ({h: data[f"acts.{h}"][idx].float() for h in hooks}, (slot, b + batch_size))
