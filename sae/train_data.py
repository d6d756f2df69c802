"""Where the trainer's activations come from.

The text is read once, in order: the first `data.heldout_tokens` tokens (whole packed rows) are the
held-out slice kept for the evals; the next `data.tokens` are for training, split over ranks by LM
batch (batch i goes to rank i % world). Two routes to the trainer:

- cache (default): harvest into the disk cache (sae/cache.py), then read it back in a seeded random
  order. The data position is (epoch, shard slot, row), so a resumed run sees exactly the batches it
  would have seen.
- stream: harvest -> ShuffleBuffer -> train, nothing on disk, for corpora too big to cache. The data
  position is the number of LM batches consumed plus the buffer's content and the batches already
  cut from it, all saved in checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import queue
import shutil
import threading
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sae.cache import CacheWriter, ActivationCache
from sae.config import DataConfig
from sae.data import TokenBatch, batches, iter_texts, pack_rows, tokenize_stream
from sae.errors import UserError
from sae.harvest import ShuffleBuffer, harvest
from sae.io import atomic_path
from sae.models import LoadedModel, cache_root

log = logging.getLogger("emosae")
HELDOUT_FILE = "heldout.safetensors"


def _rows(data: DataConfig, tokenizer) -> Iterator[tuple[list[int], list[int], list[int]]]:
    return pack_rows(tokenize_stream(iter_texts(data.dataset, data.text_field), tokenizer), data.context_size)


def heldout_rows(data: DataConfig) -> int:
    return math.ceil(data.heldout_tokens / data.context_size) if data.heldout_tokens else 0


def train_batches(data: DataConfig, tokenizer, rank: int = 0, world: int = 1, skip: int = 0
                  ) -> Iterator[TokenBatch]:
    """This rank's training LM batches (after the held-out rows), `skip` of them skipped without
    running the model (resume in stream mode)."""
    rows = islice(_rows(data, tokenizer), heldout_rows(data), heldout_rows(data) + data.tokens // data.context_size)
    mine = (b for i, b in enumerate(batches(rows, data.context_size, data.token_budget)) if i % world == rank)
    return islice(mine, skip, None)


def n_train_batches(data: DataConfig, rank: int, world: int) -> int:
    """Upper bound of this rank's LM batches (the corpus may end sooner)."""
    per = max(1, data.token_budget // data.context_size)
    total = math.ceil((data.tokens // data.context_size) / per)
    return len(range(rank, total, world))


@dataclass
class HeldOut:
    """The held-out slice: its packed rows (for the CE-loss score) and masked activations per hook."""

    batch: TokenBatch
    keep: torch.Tensor  # [rows, T] bool, the position mask (intersection over hooks)
    acts: dict[str, torch.Tensor]  # hook -> [n_kept, d] float32, raw

    @property
    def n(self) -> int:
        return int(self.keep.sum())

    def save(self, path: Path) -> None:
        tensors = {"input_ids": self.batch.input_ids, "doc_ids": self.batch.doc_ids,
                   "positions": self.batch.positions, "keep": self.keep,
                   **{f"acts.{h}": a.contiguous() for h, a in self.acts.items()}}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp))

    @classmethod
    def load(cls, path: Path) -> "HeldOut":
        with safe_open(str(path), "pt") as f:
            t = {k: f.get_tensor(k) for k in f.keys()}
        return cls(TokenBatch(t["input_ids"], t["doc_ids"], t["positions"]), t["keep"],
                   {k[5:]: v for k, v in t.items() if k.startswith("acts.")})


def harvest_heldout(lm: LoadedModel, data: DataConfig, hooks: list[str]) -> HeldOut | None:
    n_rows = heldout_rows(data)
    if not n_rows:
        return None
    rows = list(islice(_rows(data, lm.tokenizer), n_rows))
    if len(rows) < n_rows:
        raise UserError(f"{data.dataset} holds fewer than data.heldout_tokens={data.heldout_tokens} tokens; "
                        "lower data.heldout_tokens or give a bigger dataset")
    parts = list(harvest(lm.model, lm.tokenizer, batches(rows, data.context_size, data.token_budget), hooks,
                         data.outlier_mult))
    batch = TokenBatch(*(torch.cat([getattr(p.batch, f) for p in parts])
                         for f in ("input_ids", "doc_ids", "positions")))
    keep = torch.cat([p.keep for p in parts])
    acts = {h: torch.cat([p.acts[h].cpu() for p in parts]) for h in hooks}
    return HeldOut(batch, keep, acts)


# --- cache mode --------------------------------------------------------------------------------
def cache_key(lm: LoadedModel, data: DataConfig, hooks: list[str], world: int, device: str) -> str:
    """What the cached activations depend on; a change gives a fresh cache directory."""
    src = Path(data.dataset).expanduser()
    dataset = ({"path": str(src.resolve()), "size": src.stat().st_size, "mtime": src.stat().st_mtime_ns}
               if src.is_file() else {"id": data.dataset})
    blob = {"model": lm.provenance, "dataset": dataset, "hooks": sorted(hooks),
            "world": world, "device": device,
            **{k: getattr(data, k) for k in ("text_field", "context_size", "token_budget", "tokens",
                                              "heldout_tokens", "outlier_mult", "cache_dtype")}}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir_for(lm: LoadedModel, data: DataConfig, hooks: list[str], world: int, device: str) -> Path:
    if data.cache:
        return Path(data.cache).expanduser()
    return cache_root() / "activations" / f"{lm.model_id}-{cache_key(lm, data, hooks, world, device)}"


def train_part(cache_dir: Path, rank: int, world: int) -> Path:
    return cache_dir / "train" if world == 1 else cache_dir / "train" / f"rank{rank}of{world}"


def _complete(d: Path) -> bool:
    try:
        return bool(json.loads((d / "manifest.json").read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def harvest_train_cache(lm: LoadedModel, data: DataConfig, hooks: list[str], out: Path, rank: int, world: int,
                        progress: bool = True) -> None:
    """This rank's training activations into a complete cache at `out` (built beside it, renamed)."""
    from tqdm import tqdm

    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    meta = {"model_id": lm.model_id, "provenance": lm.provenance, "dataset": data.dataset,
            "outlier_mult": data.outlier_mult, "text_field": data.text_field, "rank": rank, "world": world}
    writer = CacheWriter(tmp, meta, hooks, data.context_size, data.cache_dtype)
    bar = tqdm(total=data.tokens // world, unit="tok", unit_scale=True, desc=f"harvest{'' if world == 1 else rank}",
               disable=not progress or None, dynamic_ncols=True)
    for chunk in harvest(lm.model, lm.tokenizer, train_batches(data, lm.tokenizer, rank, world), hooks,
                         data.outlier_mult):
        writer.add(chunk)
        bar.update(chunk.batch.n_tokens)
    bar.close()
    manifest = writer.close()
    if manifest["n_tokens"] == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{data.dataset} gave no training tokens after the {data.heldout_tokens} held-out ones; "
                        "lower data.heldout_tokens or give a bigger dataset")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


class CacheSource:
    """Batches of `batch_size` rows from this rank's cache; position (epoch, slot, row)."""

    def __init__(self, cache: ActivationCache, hooks: list[str], batch_size: int, seed: int, shuffle: bool,
                 epochs: int):
        missing = [h for h in hooks if h not in cache.hooks]
        if missing:
            raise UserError(f"activation cache {cache.directory} has no {missing}; it holds {cache.hooks}. "
                            "Point data.cache elsewhere or delete it to harvest again")
        self.cache, self.hooks, self.batch_size = cache, hooks, batch_size
        self.seed, self.shuffle, self.epochs = seed, shuffle, epochs
        self.epoch, self.slot, self.row = 0, 0, 0

    def steps_per_epoch(self) -> int:
        return sum(s["n"] // self.batch_size for s in self.cache.manifest["shards"])

    def total_steps(self) -> int:
        return self.steps_per_epoch() * self.epochs

    def _epoch_batches(self, epoch: int, start: tuple[int, int]):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            yield from self.cache.iter_batches(self.batch_size, g, self.hooks, start=start,
                                               epoch_seed=self.seed * 1_000_003 + epoch)
            return
        keys = [f"acts.{h}" for h in self.hooks]
        for slot in range(start[0], len(self.cache.manifest["shards"])):
            data = self.cache.shard(slot, keys)
            n = data[keys[0]].shape[0]
            for b in range(start[1] if slot == start[0] else 0, n - self.batch_size + 1, self.batch_size):
                yield {h: data[f"acts.{h}"][b:b + self.batch_size].float() for h in self.hooks}, (slot, b + self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while self.epoch < self.epochs:
            for batch, (slot, row) in self._epoch_batches(self.epoch, (self.slot, self.row)):
                self.slot, self.row = slot, row
                yield batch
            self.epoch, self.slot, self.row = self.epoch + 1, 0, 0

    def progress(self, step: int, total_steps: int) -> float:
        return step / max(1, total_steps)

    def state_dict(self) -> dict:
        return {"kind": "cache", "epoch": self.epoch, "slot": self.slot, "row": self.row}

    def load_state_dict(self, s: dict) -> None:
        if s.get("kind") != "cache":
            raise UserError("the checkpoint was written in data.mode=stream; resume with the same config")
        self.epoch, self.slot, self.row = s["epoch"], s["slot"], s["row"]


# --- stream mode -------------------------------------------------------------------------------
def buffer_device(device: torch.device, capacity: int, width: int) -> torch.device:
    """Where the stream shuffle buffer lives: on the GPU when four copies of this rank's buffer (a
    resumed one is allocated at twice its capacity, plus what one shuffle gathers and keeps) fit in
    a fifth of its memory, so activations never make a round trip through host memory; else (a
    1M-token buffer of a 4096-wide model on one GPU) in host memory. CPU runs: host memory."""
    if device.type != "cuda":
        return torch.device("cpu")
    need = 4 * capacity * width * 4
    return device if need <= torch.cuda.get_device_properties(device).total_memory // 5 else torch.device("cpu")


_END = object()


def in_background(items: Iterator, depth: int = 4) -> Iterator:
    """`items` produced by a thread up to `depth` ahead, in order; its exception is raised here.
    Only for iterators whose work (the tokenizer, file reads) nothing else uses meanwhile."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for x in items:
                if not put(x):
                    return
            put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            put(e)

    t = threading.Thread(target=work, name="emosae-data", daemon=True)
    t.start()
    try:
        while True:
            x = q.get()
            if x is _END:
                return
            if isinstance(x, BaseException):
                raise x
            yield x
    finally:
        stop.set()


class StreamSource:
    """harvest -> ShuffleBuffer -> batches, with no disk. Position: LM batches consumed, the
    buffer's rows and RNG, and batches already cut from the buffer but not yet trained on."""

    def __init__(self, lm: LoadedModel, data: DataConfig, hooks: list[str], batch_size: int, seed: int,
                 rank: int, world: int):
        self.lm, self.data, self.hooks, self.batch_size = lm, data, hooks, batch_size
        self.rank, self.world = rank, world
        capacity = max(data.buffer_tokens // world, 2 * batch_size)
        self.device = next(lm.model.parameters()).device
        self.buffer = ShuffleBuffer(capacity, batch_size, seed=seed * 1_000_003 + rank,
                                    device=buffer_device(self.device, capacity, lm.model.config.hidden_size * len(hooks)))
        self.lm_batches = 0
        self.pending: list[dict[str, torch.Tensor]] = []
        self.n_lm_batches = n_train_batches(data, rank, world)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while self.pending:
            yield self.pending.pop(0)
        src = train_batches(self.data, self.lm.tokenizer, self.rank, self.world, skip=self.lm_batches)
        if self.device.type == "cuda":  # tokenizing and packing (CPU) overlap the GPU's forward and steps
            src = in_background(src)
        for chunk in harvest(self.lm.model, self.lm.tokenizer, src, self.hooks, self.data.outlier_mult):
            self.pending = list(self.buffer.add(chunk.acts))  # moved to the buffer's device
            self.lm_batches += 1
            while self.pending:
                yield self.pending.pop(0)
        self.pending = list(self.buffer.drain())
        self.lm_batches += 1  # marks the drain as done
        while self.pending:
            yield self.pending.pop(0)

    def total_steps(self) -> int:
        """An estimate (the masked fraction is not known in advance)."""
        return max(1, int(0.97 * self.data.tokens / self.world) // self.batch_size)

    def progress(self, step: int, total_steps: int) -> float:
        return min(1.0, self.lm_batches / max(1, self.n_lm_batches))

    def state_dict(self) -> dict:
        # host copies of just the pending rows: each is a view of one shuffle's whole output (on the GPU
        # when the buffer is), which pickle (all_gather_object under torchrun) would copy once per view
        pending = [{h: t.to("cpu", copy=True) for h, t in b.items()} for b in self.pending]
        return {"kind": "stream", "lm_batches": self.lm_batches, "pending": pending,
                "buffer": self.buffer.state_dict() if self.buffer.rows else None}

    def load_state_dict(self, s: dict) -> None:
        if s.get("kind") != "stream":
            raise UserError("the checkpoint was written in data.mode=cache; resume with the same config")
        self.lm_batches, self.pending = s["lm_batches"], list(s["pending"])
        if s["buffer"] is not None:
            self.buffer.load_state_dict(s["buffer"])
