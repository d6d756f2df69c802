"""Shared fixtures: the embedded model is loaded once per session (it is cached on disk after the
first conversion), tiny random models are built from configs (no download)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need a GPU: skipped here when torch sees none (CI), so a lent GPU machine
    runs the same files (scripts/gpu_check.sh)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run by scripts/gpu_check.sh on one)")
    for item in items:
        if item.get_closest_marker("cuda"):  # the marker, not any keyword (a parametrize id "cuda" is one)
            item.add_marker(skip)


@pytest.fixture(scope="session")
def lm():
    from sae.models import load_model

    torch.set_flush_denormal(True)
    return load_model("smollm2-135m")


def tolerance_close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4, atol_mult: float = 1e-5) -> bool:
    """The project's equivalence tolerance: rtol 1e-4, atol 1e-5 x the median activation norm."""
    median = b.reshape(-1, b.shape[-1]).norm(dim=-1).median()
    return torch.allclose(a, b, rtol=rtol, atol=float(atol_mult * median))
