"""Where a run's files live, torch-free so the browser can use it too: the SAE directory, the run
root that every derived file (features/, labels.json, vectors/, labeling/) goes to, and the SAE's
fingerprint that ties those files to the weights they were made from."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from sae.errors import UserError

CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"
FINGERPRINT_KEY = "sae_fingerprint"
_EDGE = 1 << 20  # bytes hashed at each end of the weights file


def find_sae_dir(path: str | os.PathLike) -> Path:
    """RUN, RUN/sae or any directory holding cfg.json + sae_weights.safetensors."""
    p = Path(path).expanduser()
    for cand in (p, p / "sae"):
        if (cand / CFG_FILE).exists() and (cand / WEIGHTS_FILE).exists():
            return cand
    if not p.exists():
        raise UserError(f"{path} does not exist; give a run directory or an SAE directory")
    raise UserError(f"no SAE in {path} (expected {CFG_FILE} and {WEIGHTS_FILE} there or in {path}/sae)")


def run_root(path: str | os.PathLike) -> Path:
    """The folder a run's derived files go to: RUN for RUN and RUN/sae, the folder itself for a bare
    SAELens SAE directory. One rule for every verb, so what `emosae label RUN/sae` writes is what
    `emosae clamp RUN` reads."""
    d = find_sae_dir(path)
    return d.parent if d.name == "sae" else d


def sae_fingerprint(sae_dir: str | os.PathLike) -> str:
    """Identity of the saved weights: sha256 of the file size and its first and last MiB (the
    safetensors header plus weights at both ends), so it costs milliseconds on a multi-GB SAE and
    changes whenever the SAE is retrained or replaced."""
    path = Path(sae_dir) / WEIGHTS_FILE
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(_EDGE))
        if size > 2 * _EDGE:
            f.seek(size - _EDGE)
        h.update(f.read())
    return h.hexdigest()[:16]


def check_fingerprint(recorded: object, sae_dir: str | os.PathLike, made: str | os.PathLike, fix: str) -> None:
    """Refuse a derived file (labels.json, features/meta.json) made from other weights than the
    SAE's now: its feature ids would name other features. Files without a fingerprint pass."""
    if recorded is None:
        return
    if recorded != sae_fingerprint(sae_dir):
        raise UserError(f"{made} was made from another SAE than the one in {sae_dir} (retrained or replaced "
                        f"since); {fix}")
