"""Read what a run directory holds for the browser, tolerating what is missing.

Every file is optional except that there must be something to show: feature statistics, labels
or an SAE. Large tensors in `features/stats.safetensors` are read one block of features at a time
(`safe_open` slices), so a 16k- or 131k-feature run never sits in memory whole."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from sae.errors import UserError
from sae.layout import CFG_FILE, FINGERPRINT_KEY, WEIGHTS_FILE, check_fingerprint, run_root

log = logging.getLogger("emosae")

STATS_FILE = "features/stats.safetensors"


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, inverted: `Ġ` -> space, `Ċ` -> newline, ..."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def readable_tokens(vocab: list[str]) -> list[str]:
    """Token strings as text. A vocabulary written in byte-level BPE form (`Ġword`) is decoded to
    its bytes (`" word"`); one written already decoded is returned as it is."""
    vocab = [t if isinstance(t, str) else "" for t in vocab]
    sample = vocab[: 5000]
    if not sample or sum(t.startswith("Ġ") for t in sample) < 0.05 * len(sample):
        return vocab
    dec = _byte_decoder()
    out = []
    for t in vocab:
        if all(ch in dec for ch in t):
            out.append(bytes(dec[ch] for ch in t).decode("utf-8", errors="replace"))
        else:  # special tokens such as <|im_start|> are not byte-encoded
            out.append(t)
    return out


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"could not read {what} {path}: {e}; re-run the stage that writes it") from None


@dataclass
class RunData:
    """Everything the browser shows about one run; tensors stay on disk until `block()` asks."""

    dir: Path
    name: str
    d_sae: int
    labels: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    vocab: list[str] | None = None
    metrics: dict | None = None
    config_text: str | None = None
    geometry: dict | None = None
    vectors_info: dict | None = None
    sae_cfg: dict | None = None
    stats_keys: set[str] = field(default_factory=set)
    max_act: np.ndarray | None = None
    density: np.ndarray | None = None
    images: dict[str, Path] = field(default_factory=dict)  # site name -> file
    alignment_emotions: list[str] = field(default_factory=list)
    _align: Any = None  # (unit decoder rows source, unit emotion vectors) or None
    cache: dict = field(default_factory=dict)  # values derived once per run (blocks.py)

    @property
    def has_stats(self) -> bool:
        return bool(self.stats_keys)

    @property
    def hook(self) -> str | None:
        if not self.sae_cfg:
            return None
        return (self.sae_cfg.get("metadata") or {}).get("hook_name") or self.sae_cfg.get("hook_name")

    def stats_block(self, lo: int, hi: int) -> dict[str, np.ndarray]:
        """Rows lo..hi of every per-feature tensor in stats.safetensors."""
        if not self.has_stats:
            return {}
        from safetensors import safe_open

        out = {}
        with safe_open(str(self.dir / STATS_FILE), framework="np") as f:
            for key in self.stats_keys:
                sl = f.get_slice(key)
                if len(sl.get_shape()) >= 1 and sl.get_shape()[0] == self.d_sae:
                    out[key] = sl[lo:hi]
        return out

    def alignment_block(self, lo: int, hi: int) -> np.ndarray | None:
        """Cosine of each feature's decoder row with each emotion vector, [hi-lo, n_emotions]."""
        if self._align is None:
            return None
        weights, vecs = self._align
        from safetensors import safe_open

        with safe_open(str(weights), framework="np") as f:
            w = f.get_slice("W_dec")[lo:hi].astype(np.float32)
        w /= np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
        return w @ vecs.T


def _vector_key(hook: str | None) -> str | None:
    """The key of the emotion vectors at exactly the SAE's hook (features.vectors.vector_key):
    `layer_{L}` for resid_post, written `blocks.L.hook_resid_post` or as SAELens's module path
    `model.layers.L`; `{kind}_{L}` for other TransformerLens hooks; None when the hook cannot be
    told (a module path to an attention or MLP output), so no other hook's vectors are shown.
    Not an import of vector_key: features.vectors loads torch, which the browser never needs
    (a test keeps the two in step)."""
    m = re.fullmatch(r"blocks\.(\d+)\.(hook_\w+)", hook or "")
    if m:
        return f"layer_{m.group(1)}" if m.group(2) == "hook_resid_post" else f"{m.group(2)}_{m.group(1)}"
    m = re.fullmatch(r"(?:[\w.]+\.)?(?:layers|h|blocks)\.(\d+)", hook or "")
    return f"layer_{m.group(1)}" if m else None


def _load_alignment(run: RunData, weights: Path) -> None:
    """Emotion vectors at the SAE's hook, for decoder-row cosines (skipped, with a log line,
    when the run has no vectors at that hook or no SAE weights)."""
    vec_file = run.dir / "vectors" / "vectors.safetensors"
    if not vec_file.exists() or not weights.exists() or run.sae_cfg is None:
        return
    from safetensors import safe_open

    key = _vector_key(run.hook)
    if key is None:
        log.info("browse: cannot tell which emotion vectors match hook %s; alignment is not shown", run.hook)
        return
    try:
        with safe_open(str(vec_file), framework="np") as f:
            meta = f.metadata() or {}
            if key not in f.keys():
                log.info("browse: vectors have no %s (the SAE's hook); alignment is not shown", key)
                return
            vecs = f.get_tensor(key).astype(np.float32)
        emotions = json.loads(meta.get("emotions", "null")) or (run.vectors_info or {}).get("emotions")
        with safe_open(str(weights), framework="np") as f:
            d_in = f.get_slice("W_dec").get_shape()[1]
    except (OSError, ValueError, KeyError) as e:
        log.info("browse: could not read emotion vectors (%s); alignment is not shown", e)
        return
    if not emotions or len(emotions) != vecs.shape[0] or vecs.shape[1] != d_in:
        log.info("browse: emotion vectors do not match the SAE (shape %s); alignment is not shown", vecs.shape)
        return
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    run.alignment_emotions = [str(e) for e in emotions]
    run._align = (weights, vecs)


def load_run(run_dir: str | Path) -> RunData:
    """Open a run directory for browsing. A multi-SAE run (RUN/index.json) names its members."""
    d = Path(run_dir).expanduser()
    if not d.is_dir():
        raise UserError(f"run directory {run_dir} does not exist; give a run directory (RUN) written by `emosae train`")
    # RUN, RUN/sae or a bare SAELens SAE directory, resolved as every verb does (sae.layout.run_root)
    sae_dir = next((c for c in (d, d / "sae") if (c / CFG_FILE).is_file() and (c / WEIGHTS_FILE).is_file()), None)
    if sae_dir is not None:
        d = run_root(d)
    if (d / "index.json").exists() and not (d / "sae").exists():
        idx = _read_json(d / "index.json", "index")
        names = [str(s.get("name")) for s in idx.get("saes", []) if isinstance(s, dict)]
        raise UserError(f"{run_dir} holds several SAEs ({', '.join(names[:8])}); browse one: emosae browse {run_dir}/<name>")
    run = RunData(dir=d, name=d.resolve().name, d_sae=0)
    if (d / "labels.json").exists():
        run.labels = _read_json(d / "labels.json", "labels")
        if not isinstance(run.labels, dict):
            raise UserError(f"{d / 'labels.json'} is not a JSON object; re-run `emosae label`")
        wrong = [k for k in ("features", "emotions", "aligned") if run.labels.get(k) is not None
                 and not isinstance(run.labels[k], dict)]
        if wrong:  # docs/formats.md: each is an object keyed by feature id or emotion
            raise UserError(f"{d / 'labels.json'}: \"{wrong[0]}\" is not a JSON object; re-run `emosae label`")
        if sae_dir is not None:
            check_fingerprint(run.labels.get(FINGERPRINT_KEY), sae_dir, d / "labels.json", f"re-run `emosae label {d}`")
    for name in ("metrics.json",):
        if (d / name).exists():
            run.metrics = _read_json(d / name, "metrics")
    if (d / "config.yaml").exists():
        run.config_text = (d / "config.yaml").read_text(encoding="utf-8", errors="replace")
    if (d / "geometry.json").exists():
        run.geometry = _read_json(d / "geometry.json", "geometry")
    if (d / "vectors" / "vectors.json").exists():
        run.vectors_info = _read_json(d / "vectors" / "vectors.json", "vectors info")
    if sae_dir is not None:
        run.sae_cfg = _read_json(sae_dir / CFG_FILE, "SAE config")
    for site_name, rel in (("curves.png", "curves.png"), ("emotion_map.png", "emotion_map.png")):
        if (d / rel).is_file():
            run.images[site_name] = d / rel

    stats = d / STATS_FILE
    if stats.exists():
        from safetensors import safe_open

        try:
            with safe_open(str(stats), framework="np") as f:
                run.stats_keys = set(f.keys())
                if "max_act" not in run.stats_keys:
                    raise UserError(f"{stats} has no max_act; re-run `emosae stats`")
                run.max_act = f.get_tensor("max_act").astype(np.float32)
                run.density = f.get_tensor("density").astype(np.float32) if "density" in run.stats_keys else None
        except (OSError, ValueError) as e:
            raise UserError(f"could not read {stats}: {e}; re-run `emosae stats`") from None
        run.d_sae = int(run.max_act.shape[0])
        if (d / "features" / "meta.json").exists():
            run.meta = _read_json(d / "features" / "meta.json", "statistics meta")
            if sae_dir is not None and isinstance(run.meta, dict):
                check_fingerprint(run.meta.get(FINGERPRINT_KEY), sae_dir, stats, f"re-run `emosae stats {d}`")
        if (d / "features" / "vocab.json").exists():
            vocab = _read_json(d / "features" / "vocab.json", "vocabulary")
            if not isinstance(vocab, list):
                raise UserError(f"{d / 'features/vocab.json'} is not a list of token strings; re-run `emosae stats`")
            run.vocab = readable_tokens(vocab)
    elif run.sae_cfg is not None:
        run.d_sae = int(run.sae_cfg.get("d_sae", 0))
    feats = run.labels.get("features") or {}
    if not run.d_sae and feats:
        run.d_sae = 1 + max((int(k) for k in feats if str(k).isdigit()), default=-1)
    if not run.d_sae:
        raise UserError(f"nothing to browse in {run_dir}: no features/stats.safetensors, labels.json or sae/cfg.json; "
                        "run `emosae stats RUN` and `emosae label RUN` first")
    if sae_dir is not None:
        _load_alignment(run, sae_dir / WEIGHTS_FILE)
    return run
