"""Training checkpoints: one file per checkpoint under RUN/checkpoints/, written atomically
(temp file + rename), the last `keep` kept. A checkpoint holds everything a resumed run needs to
continue exactly: SAE and optimizer state, schedule position, dead-latent counters, normaliser,
every rank's RNG states and data position, the shuffle buffer (stream mode) and the history."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from sae.errors import UserError
from sae.io import atomic_path

CKPT_DIR = "checkpoints"


def save(run_dir: Path, tokens: int, state: dict, keep: int) -> Path:
    d = Path(run_dir) / CKPT_DIR
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"ckpt_{tokens:012d}.pt"
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    for old in sorted(d.glob("ckpt_*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def latest(run_dir: Path) -> Path | None:
    found = sorted((Path(run_dir) / CKPT_DIR).glob("ckpt_*.pt"))
    return found[-1] if found else None


def load(path: Path) -> dict:
    try:
        # our own file; it holds RNG states (numpy arrays, tuples), so not weights_only
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"could not read checkpoint {path}: {str(e).splitlines()[0][:200]}; "
                        "delete it to resume from the one before") from None


def rng_state() -> dict:
    s = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
