"""Where a run's files live, torch-free so the browser can use it too: the SAE directory, the run
root that every derived file (features/, labels.json, vectors/, labeling/) goes to, and the SAE's
fingerprint that ties those files to the weights they were made from."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from sae.errors import UserError
from sae.io import read_json

CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"
FINGERPRINT_KEY = "sae_fingerprint"
_EDGE = 1 << 20  # bytes hashed at each end of the weights file
log = logging.getLogger("emosae")
_warned: set[Path] = set()


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
    d = Path(os.path.abspath(find_sae_dir(path)))  # "." or ".." inside RUN/sae has no name to test
    if d.name != "sae":
        return d
    left = [n for n in ("labels.json", "features") if (d / n).exists() and not (d.parent / n).exists()]
    if left and d not in _warned:  # written there by emosae before the one-root rule; read nowhere now
        _warned.add(d)
        log.warning("%s holds %s, which emosae no longer reads: derived files live in %s; move them there",
                    d, " and ".join(left), d.parent)
    return d.parent


def root_or_path(path: str | os.PathLike) -> Path:
    """run_root for a path that holds an SAE; the path itself otherwise (a vectors folder, a run
    without its SAE), for readers that accept either."""
    try:
        return run_root(path)
    except UserError:
        return Path(path)


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


def read_object(path: str | os.PathLike) -> dict:
    """A derived JSON file that must hold an object (labels.json, features/meta.json, metrics.json)."""
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise UserError(f"{path} is not a JSON object; re-create it with the stage that writes it")
    return doc


def recorded_fingerprint(path: str | os.PathLike) -> object:
    """The SAE fingerprint a derived JSON file records; None when the file or the key is absent."""
    return read_object(path).get(FINGERPRINT_KEY) if Path(path).exists() else None


def check_fingerprint(recorded: object, sae_dir: str | os.PathLike, made: str | os.PathLike, fix: str) -> None:
    """Refuse a derived file (labels.json, features/meta.json) made from other weights than the
    SAE's now: its feature ids would name other features. Files without a fingerprint pass."""
    if recorded is None:
        return
    if recorded != sae_fingerprint(sae_dir):
        raise UserError(f"{made} was made from another SAE than the one in {sae_dir} (retrained or replaced "
                        f"since); {fix}")
