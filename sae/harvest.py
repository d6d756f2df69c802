"""Activations at hook points, with the model cut after the deepest hook.

`harvest()` turns token batches into masked activation rows; `ShuffleBuffer` mixes rows from many
batches before training sees them (neighbouring tokens are highly correlated)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from sae.data import TokenBatch, position_mask
from sae.hooks import run_to_hooks


@dataclass
class ActivationChunk:
    """Masked activations of one token batch. `acts[hook]` is [n_kept, d_model] float32; `index`
    is each kept token's flat position in the batch (row * context_size + t)."""

    acts: dict[str, torch.Tensor]
    index: torch.Tensor
    batch: TokenBatch  # on the host
    keep: torch.Tensor  # [rows, T] bool, the position mask

    @property
    def n(self) -> int:
        return int(self.index.numel())


def special_ids(tokenizer) -> list[int]:
    return sorted(set(tokenizer.all_special_ids))


def _prefetch(batches: Iterable[TokenBatch], device: torch.device) -> Iterator[tuple[TokenBatch, TokenBatch]]:
    """Yield (host batch, device batch), copying the next batch from pinned memory while the
    current one runs (CUDA only; on CPU the batch is used as is)."""
    if device.type != "cuda":
        for b in batches:
            yield b, b
        return
    it = iter(batches)
    nxt = next(it, None)
    pending = (nxt, nxt.pin_memory().to(device, non_blocking=True)) if nxt is not None else None
    while pending is not None:
        cur = pending
        nxt = next(it, None)
        pending = (nxt, nxt.pin_memory().to(device, non_blocking=True)) if nxt is not None else None
        yield cur


def forward_acts(model, batch: TokenBatch, hooks: list[str]) -> dict[str, torch.Tensor]:
    """Activations at `hooks` for a packed batch (no grad; stops after the deepest hook). The
    precision is the model's own (`sae.models.load_model`'s `autocast`)."""
    with torch.inference_mode():
        return run_to_hooks(model, hooks, **batch.forward_kwargs(mask_dtype(model)))


def mask_dtype(model) -> torch.dtype:
    """The dtype of a 4D attention mask for `model`: its autocast dtype when its forward runs
    under one (sae.models.autocast_forward), else its weights'."""
    return getattr(model, "emosae_autocast", None) or next(model.parameters()).dtype


def harvest(model, tokenizer, batches: Iterable[TokenBatch], hooks: list[str],
            outlier_mult: float | None = 10.0) -> Iterator[ActivationChunk]:
    """Masked activations at every hook, one chunk per batch. With several hooks, a position is
    kept only where it is kept at every hook, so rows stay aligned across SAEs."""
    device = next(model.parameters()).device
    specials = special_ids(tokenizer)
    for host, dev in _prefetch(batches, device):
        acts = forward_acts(model, dev, hooks)
        keep = None
        for h in hooks:
            k = position_mask(dev.input_ids, dev.positions, specials, acts[h], outlier_mult)
            keep = k if keep is None else keep & k
        flat = keep.reshape(-1)
        index = flat.nonzero().squeeze(1)
        out = {h: a.reshape(-1, a.shape[-1])[index].float() for h, a in acts.items()}
        yield ActivationChunk(out, index.cpu(), host, keep.cpu())


class ShuffleBuffer:
    """Mixes activation rows from many batches: fill to `capacity`, then hand out a random half
    in batches of `batch_size` and keep the other half to mix with what comes next."""

    def __init__(self, capacity: int, batch_size: int, seed: int = 0, device: str | torch.device = "cpu"):
        if capacity < 2 * batch_size:
            raise ValueError("shuffle buffer capacity must hold at least two batches")
        self.capacity, self.batch_size = capacity, batch_size
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self.device = torch.device(device)
        self.rows: dict[str, torch.Tensor] = {}
        self.n = 0

    def add(self, rows: dict[str, torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
        """Add rows; yield batches whenever the buffer is full."""
        m = next(iter(rows.values())).shape[0]
        if not self.rows:
            self.rows = {h: torch.empty(self.capacity + m, r.shape[1], dtype=r.dtype, device=self.device)
                         for h, r in rows.items()}
        for h, r in rows.items():
            buf = self.rows[h]
            if self.n + m > buf.shape[0]:
                grown = torch.empty(self.n + m, buf.shape[1], dtype=buf.dtype, device=self.device)
                grown[: self.n] = buf[: self.n]
                self.rows[h] = buf = grown
            buf[self.n:self.n + m] = r.to(self.device)
        self.n += m
        if self.n >= self.capacity:
            yield from self._emit(self.n // 2)

    def drain(self) -> Iterator[dict[str, torch.Tensor]]:
        """Hand out everything left (end of data), full batches only."""
        yield from self._emit(self.n)

    def _emit(self, count: int) -> Iterator[dict[str, torch.Tensor]]:
        perm = torch.randperm(self.n, generator=self.gen).to(self.device)
        count = (count // self.batch_size) * self.batch_size
        out_idx, keep_idx = perm[:count], perm[count:]
        out = {h: buf[: self.n][out_idx] for h, buf in self.rows.items()}
        for h, buf in self.rows.items():
            buf[: len(keep_idx)] = buf[: self.n][keep_idx].clone()
        self.n = len(keep_idx)
        for i in range(0, count, self.batch_size):
            yield {h: o[i:i + self.batch_size] for h, o in out.items()}

    def state_dict(self) -> dict:
        return {"rows": {h: b[: self.n].clone().cpu() for h, b in self.rows.items()}, "n": self.n,
                "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.n = state["n"]
        self.gen.set_state(state["gen"])
        self.rows = {}
        for h, r in state["rows"].items():
            buf = torch.empty(max(self.capacity * 2, self.n), r.shape[1], dtype=r.dtype, device=self.device)
            buf[: self.n] = r.to(self.device)
            self.rows[h] = buf
