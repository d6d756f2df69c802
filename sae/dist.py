"""torch.distributed for data-parallel SAE training, launched by torchrun on the `emosae train`
entry point: NCCL on GPUs (with gloo beside it for CPU tensors and objects), gloo on CPU. With
one process every helper is a no-op."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this Dist created the process group, so it destroys it (`shutdown`)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN,
                                   "max": dist.ReduceOp.MAX}[op])
        return t

    def broadcast(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.enabled:
            dist.broadcast(t, src)
        return t

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (on every rank)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def all_gather_cat(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's rows of `t` (same shape on every rank), concatenated in rank order."""
        if not self.enabled:
            return t
        out = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(out, t.contiguous())
        return torch.cat(out)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_from_env(device_type: str) -> Dist:
    """Join the process group torchrun set up (WORLD_SIZE > 1), or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local)  # else every rank's NCCL work would start on GPU 0
    owns = not dist.is_initialized()
    if owns:  # NCCL for CUDA tensors; gloo for the CPU ones (step counts, cached batches, pickled state)
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local, owns)


def shutdown(d: Dist) -> None:
    """Destroy the process group this run created (one the caller set up is left alone). Left to
    interpreter exit, gloo's threads can be torn down mid-flight: 'terminate called without an
    active exception' and SIGABRT on rank 0, seen once in CI."""
    if d.enabled and d.owns_group and dist.is_initialized():
        dist.destroy_process_group()
