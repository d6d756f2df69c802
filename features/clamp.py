"""Clamp SAE features (or add emotion vectors) inside a plain Hugging Face model, `generate()` and
its KV cache included.

    run = load_run("runs/demo")                       # SAE + labels + max_act + mean_resid_norm + vectors
    with clamp(lm.model, run, {"happy": "4x", 812: "ablate"}, scope="generated"):
        out = lm.model.generate(**inputs, max_new_tokens=40)

At the SAE's hook the residual x gets x + sum_i (new_i - current_i) * W_dec[i]: the SAE's
reconstruction error is kept, only the chosen features move, and an unchanged value is an exact
no-op. Modes: `set` (the Golden Gate clamp, default), `add` (add to the activation), `scale`
(multiply it), `ablate` (set it to 0). Emotion vectors are `add`-only edits along a unit vector.
Strengths are `features.units` strings: `8.0`, `4x` (of max_act), `0.05r` (of mean_resid_norm).

Positions: each forward's tokens get absolute positions from the KV cache's length, so `scope`
("all" | "prompt" | "generated") holds during cached generation; the prompt is the first forward
of a sequence (or `prompt_len=` when scoring a prompt+continuation in one forward)."""

from __future__ import annotations

import difflib
import numbers
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from features.units import Strength, parse_strength
from sae.architectures import load_sae
from sae.errors import UserError
from sae.hooks import HookPoint, add_hook, parse_hook
from sae.layout import FINGERPRINT_KEY, check_fingerprint, find_sae_dir, read_object, recorded_fingerprint, run_root

log = logging.getLogger("emosae")

MODES = ("set", "add", "scale", "ablate")
SCOPES = ("all", "prompt", "generated")
CONTROL_KINDS = ("direction", "feature")  # the random control: an isotropic direction, or another SAE feature


# --- what a run gives the clamp ------------------------------------------------------------------
@dataclass
class RunAssets:
    """Everything clamping reads from a run directory; any part but the SAE may be missing."""

    sae: Any
    path: Path | None = None
    labels: dict | None = None
    max_act: torch.Tensor | None = None  # [d_sae]
    mean_resid_norm: float | None = None
    # file key (features.vectors.vector_key: "layer_15" at resid_post, else e.g. "hook_mlp_out_15") -> (emotions, [n, d])
    vectors: dict[str, tuple[list[str], torch.Tensor]] = field(default_factory=dict)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> RunAssets:
    """Load RUN/sae plus whichever of labels.json, features/stats.safetensors (max_act),
    metrics.json (mean_resid_norm) and vectors/vectors.safetensors exist."""
    from safetensors import safe_open

    sae_dir, root = find_sae_dir(run_dir), run_root(run_dir)
    assets = RunAssets(sae=load_sae(sae_dir, device), path=root)
    if (root / "labels.json").exists():
        assets.labels = read_object(root / "labels.json")
        check_fingerprint(assets.labels.get(FINGERPRINT_KEY), sae_dir, root / "labels.json",
                          f"re-run `emosae label {root}`")
    stats = root / "features" / "stats.safetensors"
    if stats.exists():
        meta = root / "features" / "meta.json"  # max_act of another SAE would scale clamps wrongly
        check_fingerprint(recorded_fingerprint(meta), sae_dir, stats,
                          f"re-run `emosae stats {root}`")
        with safe_open(str(stats), "pt") as f:
            if "max_act" in f.keys():
                assets.max_act = f.get_tensor("max_act").float()
    if (root / "metrics.json").exists():
        value = read_object(root / "metrics.json").get("mean_resid_norm")
        assets.mean_resid_norm = float(value) if value is not None else None
    if (root / "vectors" / "vectors.safetensors").exists():
        from features.vectors import load_vector_set

        emotions, tensors, _ = load_vector_set(root)
        assets.vectors = {key: (emotions, mat) for key, mat in tensors.items()}
    return assets


def sae_hook_name(sae: Any) -> str:
    """Hook name of an emosae SAE (`cfg.hook_name`) or a SAELens one (`cfg.metadata.hook_name`)."""
    cfg = getattr(sae, "cfg", None)
    name = getattr(cfg, "hook_name", None)
    if not name:
        meta = getattr(cfg, "metadata", None)
        name = meta.get("hook_name") if isinstance(meta, dict) else getattr(meta, "hook_name", None)
    if not name:
        raise UserError("the SAE names no hook point (cfg.hook_name / cfg.metadata.hook_name); "
                        "load it with sae.architectures.load_sae or set its hook name")
    return name


# --- edits ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Edit:
    """One resolved change at the hook: a feature (index >= 0) or a vector (index None).
    `value` is the resolved strength: the activation to set/add, the scale factor, or the norm
    added along a unit vector."""

    name: str  # what the user asked for: "happy", "812", "vector:happy"
    mode: str
    strength: Strength | None
    value: float
    direction: torch.Tensor  # [d_model] the row the coefficient multiplies; [batch, d_model] per row
    feature: int | None = None
    label: str | None = None

    def describe(self) -> dict:
        d = {"target": self.name, "kind": "feature" if self.feature is not None else "vector",
             "mode": self.mode, "strength": None if self.strength is None else str(self.strength),
             "value": self.value}
        if self.feature is not None:
            d.update(feature=self.feature, label=self.label)
        if self.mode in ("set", "add"):
            d["residual_norm"] = abs(self.value) * float(self.direction.norm(dim=-1).flatten()[0])
        return d

    def __str__(self) -> str:
        who = f"feature {self.feature}" + (f" ({self.label})" if self.label else "") if self.feature is not None \
            else f"vector {self.name.removeprefix('vector:')}"
        if self.mode == "ablate":
            return f"{who} ablate"
        extra = "" if self.strength is None or self.strength.unit == "abs" else f" (={self.value:.3g})"
        return f"{who} {self.mode}={self.strength}{extra}"


def parse_spec(spec: Any, default_mode: str = "set") -> tuple[str, Strength | None]:
    """A feature's value in the `clamp()` dict -> (mode, strength).

    8.0 | "4x" | "0.05r" (default mode) · "add=0.05r" | "scale=2" | "ablate" · ("add", "4x")."""
    if isinstance(spec, tuple):
        if len(spec) == 1 or (len(spec) == 2 and spec[1] is None):
            mode, raw = spec[0], None
        elif len(spec) == 2:
            mode, raw = spec
        else:
            raise UserError(f"clamp spec {spec!r} should be (mode, strength)")
    elif isinstance(spec, str) and ("=" in spec or spec.strip().lower() in MODES):
        mode, _, raw = spec.strip().partition("=")
        raw = raw or None
    else:
        mode, raw = default_mode, spec
    mode = str(mode).strip().lower()
    if mode not in MODES:
        if isinstance(spec, str) and "=" not in spec:
            raise UserError(f"cannot parse clamp spec {spec!r}: give a strength (8.0, 4x, 0.05r) "
                            f"or MODE=STRENGTH with MODE one of {', '.join(MODES)}")
        raise UserError(f"unknown clamp mode {mode!r}; use one of {', '.join(MODES)}")
    if mode == "ablate":
        if raw not in (None, "", 0, 0.0, "0"):
            raise UserError(f"ablate takes no strength (got {raw!r}); write \"ablate\" (CLI: FEATURE=ablate)")
        return mode, None
    if raw is None:
        raise UserError(f"mode {mode} needs a strength, e.g. {mode}=4x")
    strength = parse_strength(raw)
    if mode == "scale" and strength.unit != "abs":
        raise UserError(f"scale takes a plain factor (e.g. scale=2), not {strength}")
    return mode, strength


def nearest(name: str, choices: Iterable[str], n: int = 5) -> str:
    choices = sorted(set(choices))
    close = difflib.get_close_matches(name.lower(), choices, n=n, cutoff=0.5)
    shown = close or choices[:n]
    return ", ".join(shown) + ("" if close or len(choices) <= n else ", ...") if shown else "(none)"


def resolve_feature(key: int | str, d_sae: int, labels: dict | None) -> tuple[int, str | None]:
    """A feature index (`812`, "812") or an emotion label from labels.json ("happy" = its top-ranked
    feature, "happy#2" = the second) -> (index, label)."""
    key = _as_index(key)
    if isinstance(key, bool):
        raise UserError(f"feature {key!r} is neither an index nor a label")
    if isinstance(key, int) or (isinstance(key, str) and key.strip().lstrip("-").isdigit()):
        idx = int(key)
        if not 0 <= idx < d_sae:
            raise UserError(f"feature index {idx} is out of range: the SAE has features 0..{d_sae - 1}")
        return idx, _label_of(idx, labels)
    if not isinstance(key, str):
        raise UserError(f"feature {key!r} is neither an index nor a label")
    name, _, rank = key.strip().partition("#")
    name = name.lower()
    if labels is None:
        raise UserError(f"feature {key!r} is a label but there is no labels.json; run `emosae label RUN` "
                        "or give a feature index")
    emotions = {k.lower(): v for k, v in (labels.get("emotions") or {}).items()}
    ranked = [e["feature"] for e in emotions.get(name, [])]
    if not ranked:  # fall back on per-feature labels, best score first
        feats = [(v.get("score") or 0.0, int(k)) for k, v in (labels.get("features") or {}).items()
                 if str(v.get("label") or "").lower() == name]
        ranked = [i for _, i in sorted(feats, reverse=True)]
    if not ranked:
        known = set(emotions) | {str(v.get("label")).lower() for v in (labels.get("features") or {}).values()
                                 if v.get("label")}
        if not known:
            raise UserError(f"feature {key!r} is a label but labels.json holds no labels yet; run `emosae label RUN` "
                            "or give a feature index")
        if name in emotions:
            raise UserError(f"no feature is labeled {name!r} in labels.json; try a nearby emotion or an index")
        raise UserError(f"unknown label {name!r}; nearest labels: {nearest(name, known)}")
    try:
        r = int(rank) if rank else 1
    except ValueError:
        raise UserError(f"bad rank in {key!r}; write LABEL#N with N a number (LABEL#2 = second feature)") from None
    if not 1 <= r <= len(ranked):
        raise UserError(f"{name!r} has {len(ranked)} labeled feature(s); {key!r} asks for #{r}")
    idx = int(ranked[r - 1])
    if not 0 <= idx < d_sae:
        raise UserError(f"labels.json maps {name!r} to feature {idx}, outside this SAE (0..{d_sae - 1}); "
                        "the labels belong to another SAE")
    return idx, name


def _as_index(key: Any) -> Any:
    """numpy integers and 0-d integer tensors (what topk/argsort hand back) -> int; else unchanged."""
    if isinstance(key, numbers.Integral) and not isinstance(key, bool):
        return int(key)
    if torch.is_tensor(key) and key.numel() == 1 and not key.dtype.is_floating_point and key.dtype != torch.bool:
        return int(key.item())
    return key


def _label_of(idx: int, labels: dict | None) -> str | None:
    if not labels:
        return None
    entry = (labels.get("features") or {}).get(str(idx)) or {}
    return entry.get("label")


def resolve_vector(name: str, hook: str, assets: RunAssets | None) -> torch.Tensor:
    """The unit emotion vector `name` computed at exactly `hook` (RUN/vectors/vectors.safetensors)."""
    from features.vectors import vector_key

    if assets is None or not assets.vectors:
        raise UserError(f"vector {name!r} needs RUN/vectors/vectors.safetensors; run `emosae vectors --run RUN` first")
    key = vector_key(hook)
    if key not in assets.vectors:
        raise UserError(f"no emotion vectors at {hook} (this run has {', '.join(sorted(assets.vectors))}); "
                        f"compute them there (`emosae vectors --run RUN` covers the SAE's hook) or pass a hook that has them")
    emotions, mat = assets.vectors[key]
    lowered = [e.lower() for e in emotions]
    if name.lower() not in lowered:
        raise UserError(f"unknown emotion vector {name!r}; nearest: {nearest(name, lowered)}")
    v = mat[lowered.index(name.lower())]
    return v / v.norm().clamp_min(1e-12)


# --- the clamp -----------------------------------------------------------------------------------
class Clamp:
    """A context manager holding resolved edits; `with` installs the hooks, exit removes them.

    `prompt_len` fixes the prompt boundary (else the first forward of each sequence defines it);
    `record=True` keeps, per forward, the absolute positions and the edit norm per position."""

    def __init__(self, model: nn.Module, sae: Any, edits: list[Edit], hook: HookPoint, scope: str = "all",
                 prompt_len: int | None = None, outlier_norm: float | None = None,
                 outlier_median_mult: float | None = None, record: bool = False):
        self.model, self.sae, self.edits, self.hook = model, sae, edits, hook
        self.scope, self.prompt_len, self.outlier_norm, self.record = scope, prompt_len, outlier_norm, record
        self.outlier_median_mult = outlier_median_mult
        self.log: list[dict] = []
        self._handles: list = []
        self._offset = 0
        self._end: int | None = None  # sequence length after the last tracked forward
        self._seq_prompt_len: int | None = None
        self._prefix: torch.Tensor | None = None
        feats = [e for e in edits if e.feature is not None and e.mode != "add"]
        self._need_acts = torch.tensor([e.feature for e in feats], dtype=torch.long)
        self._act_slot = {id(e): i for i, e in enumerate(feats)}
        self._dirs = torch.stack([e.direction for e in edits]).float() if edits else None
        self.row_mask: torch.Tensor | None = None  # [batch, n_edits] 0/1: which edits act on which row (`stack`)

    # settings, for printing and JSON
    def describe(self) -> dict:
        return {"hook": self.hook.name, "scope": self.scope, "edits": [e.describe() for e in self.edits]}

    def __str__(self) -> str:
        edits = "; ".join(str(e) for e in self.edits) or "no edits"
        return f"{edits} [scope={self.scope}, {self.hook.name}]"

    def __enter__(self) -> "Clamp":
        if self._handles:
            raise RuntimeError("this clamp is already active")
        self._offset, self._end, self._seq_prompt_len, self._prefix = 0, None, None, None
        self._handles = [self.model.register_forward_pre_hook(self._track, with_kwargs=True)]
        try:
            self._handles.append(add_hook(self.model, self.hook, self._edit))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # positions: where this forward's tokens sit in the sequence
    def _track(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if ids is None:
            return
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = _cache_len(cache)
        t = ids.shape[1]
        if past > 0:  # a cached step
            if past != self._end:  # a cache this clamp did not watch fill (a prefilled prompt): its
                self._seq_prompt_len, self._prefix = past + t, None  # uncached tokens end the prompt
            self._offset, self._end = past, past + t
            return
        self._offset, self._end = 0, t
        prev = self._prefix
        # without a cache, generate() re-feeds the growing sequence; a fresh cache object means a new one
        continuing = (cache is None and prev is not None and prev.shape[0] == ids.shape[0] and t > prev.shape[1]
                      and torch.equal(ids[:, :prev.shape[1]], prev))
        if not continuing:
            self._prefix = ids.detach()
            self._seq_prompt_len = t

    def _scope_mask(self, t: int, device) -> torch.Tensor | None:
        if self.scope == "all":
            return None
        boundary = self.prompt_len if self.prompt_len is not None else self._seq_prompt_len
        if boundary is None:
            boundary = self._offset + t  # no tracked forward (the pre-hook did not fire): all prompt
        pos = torch.arange(self._offset, self._offset + t, device=device)
        return pos < boundary if self.scope == "prompt" else pos >= boundary

    def _edit(self, x: torch.Tensor) -> torch.Tensor | None:
        b, t, _ = x.shape
        where = self._scope_mask(t, x.device)
        if where is not None:
            where = where[None, :].expand(b, t)
        if self.outlier_norm is not None or self.outlier_median_mult is not None:
            # attention sinks: the SAE never saw them (sae.data.position_mask), leave them be
            norms = x.float().norm(dim=-1)
            bar = self.outlier_norm if self.outlier_norm is not None else self.outlier_median_mult * norms.median()
            ok = norms <= bar
            where = ok if where is None else where & ok
        if not self.edits or (where is not None and not where.any()):
            self._remember(t, torch.zeros(b, t))
            return None
        coef = torch.zeros(b, t, len(self.edits), device=x.device, dtype=torch.float32)
        if len(self._need_acts):
            sae_param = self.sae.W_dec
            acts = self.sae.encode(x.to(sae_param.device, sae_param.dtype))
            cur = acts[..., self._need_acts.to(acts.device)].float().to(x.device)
        for i, e in enumerate(self.edits):
            if e.mode == "add":
                coef[..., i] = e.value
                continue
            c = cur[..., self._act_slot[id(e)]]
            if e.mode == "set":
                coef[..., i] = e.value - c
            elif e.mode == "scale":
                coef[..., i] = c * e.value - c
            else:  # ablate
                coef[..., i] = -c
        if self.row_mask is not None:
            if self.row_mask.shape[0] != b:
                raise ValueError(f"this clamp has edits for {self.row_mask.shape[0]} rows, the batch has {b}")
            coef = coef * self.row_mask.to(coef.device)[:, None, :]
        if self._dirs.dim() == 3:  # one direction per batch row (a control over several directions)
            if self._dirs.shape[1] != b:
                raise ValueError(f"this clamp has directions for {self._dirs.shape[1]} rows, the batch has {b}")
            delta = torch.einsum("btn,nbd->btd", coef, self._dirs.to(x.device))
        else:
            delta = coef @ self._dirs.to(x.device)
        if where is not None:
            delta = delta * where[..., None]
        self._remember(t, delta.norm(dim=-1))
        return torch.where(where[..., None], x + delta.to(x.dtype), x) if where is not None else x + delta.to(x.dtype)

    def _remember(self, t: int, norms: torch.Tensor) -> None:
        if self.record:
            self.log.append({"positions": list(range(self._offset, self._offset + t)),
                             "delta_norm": norms.detach().cpu()})


def stack(clamps: Sequence[Clamp], rows: Sequence[int]) -> Clamp:
    """One clamp for a batch that concatenates `rows[i]` rows for each of `clamps`: row r of block i
    gets exactly clamp i's edits. Lets one `generate()` call serve several clamp settings (on CPU,
    sampling is bound by reading the weights, so 64 rows cost about twice 16, not four times)."""
    if len(clamps) != len(rows) or not clamps:
        raise ValueError("one row count per clamp, and at least one clamp")
    if any(not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1 for n in rows):
        raise ValueError(f"row counts must be positive integers, not {list(rows)}")
    first = clamps[0]
    for c in clamps:
        same = (c.model is first.model and c.sae is first.sae and c.hook == first.hook and c.scope == first.scope
                and c.prompt_len == first.prompt_len and c.outlier_norm == first.outlier_norm
                and c.outlier_median_mult == first.outlier_median_mult)
        if not same:
            raise ValueError("stacked clamps must share model, SAE, hook, scope, prompt_len and outlier handling")
        if c.row_mask is not None or any(e.direction.dim() != 1 for e in c.edits):
            raise ValueError("per-row clamps (controls over several directions, stacks) cannot be stacked")
    edits = [e for c in clamps for e in c.edits]
    out = Clamp(first.model, first.sae, edits, first.hook, scope=first.scope, prompt_len=first.prompt_len,
                outlier_norm=first.outlier_norm, outlier_median_mult=first.outlier_median_mult, record=first.record)
    mask = torch.zeros(sum(rows), len(edits))
    r0 = e0 = 0
    for c, n in zip(clamps, rows):
        mask[r0:r0 + n, e0:e0 + len(c.edits)] = 1.0
        r0, e0 = r0 + n, e0 + len(c.edits)
    out.row_mask = mask
    return out


def _cache_len(cache: Any) -> int:
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    try:  # legacy tuple of (k, v) per layer
        return int(cache[0][0].shape[-2])
    except (TypeError, IndexError, AttributeError):
        return 0


def clamp(model: nn.Module, sae: Any = None, features: Mapping[int | str, Any] | None = None, *,
          mode: str = "set", vectors: Mapping[str, Any] | None = None, scope: str = "all",
          prompt_len: int | None = None, hook: str | None = None, labels: dict | None = None,
          max_act: torch.Tensor | None = None, mean_resid_norm: float | None = None,
          random_control: int | Sequence[int] | None = None, control_kind: str = "direction", skip_outliers: float | None = 10.0,
          record: bool = False) -> Clamp:
    """Build a clamp; use it as `with clamp(...):` around `model(...)` or `model.generate(...)`.

    sae: a RunAssets (`load_run`), an emosae SAE or a SAELens SAE, or a run directory path.
    features: {index or label: spec}, spec = 8.0 | "4x" | "0.05r" | "add=0.05r" | "scale=2" | "ablate".
    vectors: {emotion: "0.05r" | 8.0 | ("add", ...)}, or {name: (tensor, strength)} for any direction.
    random_control: a seed; every edit then writes along a random direction of the same norm (the
    matched control); a list of seeds, one per batch row, gives each row its own directions (row i's
    exactly those of random_control=seeds[i]); control_kind "direction" draws it isotropically, "feature" takes a random other
    decoder row of the SAE (on the dictionary's manifold: "any feature at this strength").
    skip_outliers: leave positions whose norm exceeds this x mean_resid_norm (the attention sink)
    unedited, or this x the forward's median norm when no mean_resid_norm is known (a bare SAE, as
    sae.data.position_mask does); None edits every position.
    A feature named twice (two labels that share it, or a label and its index) is edited once; with
    two different edits it is an error. Hooks are the model's: a clamp steers every forward of
    `model` while it is active, whichever thread runs it, and nested clamps on one feature compose."""
    if scope not in SCOPES:
        raise UserError(f"unknown scope {scope!r}; use one of {', '.join(SCOPES)}")
    if mode not in MODES:
        raise UserError(f"unknown clamp mode {mode!r}; use one of {', '.join(MODES)}")
    assets = sae if isinstance(sae, RunAssets) else load_run(sae) if isinstance(sae, (str, Path)) else None
    sae_obj = assets.sae if assets is not None else sae
    if assets is not None:
        labels = labels if labels is not None else assets.labels
        max_act = max_act if max_act is not None else assets.max_act
        mean_resid_norm = mean_resid_norm if mean_resid_norm is not None else assets.mean_resid_norm
    d_model = int(model.config.hidden_size) if hasattr(model, "config") else None
    if sae_obj is not None:
        hp_sae = parse_hook(sae_hook_name(sae_obj), model)
        d_in = int(sae_obj.W_dec.shape[1])
        if d_model is not None and d_in != d_model:
            raise UserError(f"the SAE reads d_in={d_in} but the model's hidden size is {d_model}: "
                            "the SAE belongs to another model")
    hp = parse_hook(hook, model) if hook else (hp_sae if sae_obj is not None else None)
    if hp is None:
        raise UserError("no hook point: give an SAE (or run) or hook=blocks.L.hook_resid_post")
    if features is not None and not isinstance(features, Mapping):
        raise UserError(f"features is a dict {{feature: strength}} (e.g. {{'happy': '4x'}}), not {type(features).__name__}")
    if features and sae_obj is None:
        raise UserError("clamping features needs an SAE; pass a run directory or an SAE")
    if features and hp != hp_sae:
        raise UserError(f"features live at the SAE's hook {hp_sae.name}, not {hp.name}")

    edits: list[Edit] = []
    by_feature: dict[int, Edit] = {}
    if features:
        w_dec = sae_obj.W_dec.detach()
        for key, spec in features.items():
            idx, label = resolve_feature(key, int(w_dec.shape[0]), labels)
            m, strength = parse_spec(spec, mode)
            row = w_dec[idx].float().cpu()
            norm = float(row.norm())
            if m == "ablate":
                value = 0.0
            elif m == "scale":
                value = strength.value
            else:
                ma = None if max_act is None else float(max_act[idx])
                value = strength.resolve(ma, mean_resid_norm, decoder_norm=norm, what=f"strength of {key}")
            edit = Edit(str(key), m, strength, value, row, feature=idx, label=label)
            first = by_feature.setdefault(idx, edit)
            if first is edit:
                edits.append(edit)
            elif (first.mode, first.value) == (m, value):  # two labels (or a label and its index) name one feature
                log.info("%r and %r are both feature %d; clamping it once", first.name, edit.name, idx)
            else:
                raise UserError(f"{first.name!r} and {edit.name!r} are both feature {idx} with different edits "
                                f"({first.mode} {first.value:g} vs {m} {value:g}); give it one")
    for key, spec in (vectors or {}).items():
        if isinstance(spec, tuple) and len(spec) == 2 and torch.is_tensor(spec[0]):
            direction, raw = spec[0].detach().float().cpu(), spec[1]
            direction = direction / direction.norm().clamp_min(1e-12)
        else:
            direction, raw = resolve_vector(str(key), hp.name, assets), spec
        if d_model is not None and direction.shape[-1] != d_model:
            raise UserError(f"vector {key!r} has {direction.shape[-1]} dims but the model's hidden size is {d_model}")
        m, strength = parse_spec(raw, "add") if not isinstance(raw, (int, float)) else ("add", parse_strength(raw))
        if m != "add":
            raise UserError(f"vector {key!r}: emotion vectors are added, not {m}; write {key}=STRENGTH")
        if strength.unit == "x":
            parse_strength(str(strength), allow_x=False, what=f"strength of vector {key!r}")
        value = strength.resolve(None, mean_resid_norm, what=f"strength of vector {key!r}")
        edits.append(Edit(f"vector:{key}", "add", strength, value, direction))
    if random_control is not None:
        if control_kind not in CONTROL_KINDS:
            raise UserError(f"unknown control kind {control_kind!r}; use one of {', '.join(CONTROL_KINDS)}")
        if control_kind == "feature" and sae_obj is None:
            raise UserError("a random-feature control needs an SAE; pass a run directory or an SAE")
        one = isinstance(random_control, numbers.Real) or (torch.is_tensor(random_control) and random_control.dim() == 0)
        seeds = [int(x) for x in ([random_control] if one else random_control)]
        if not seeds:
            raise UserError("random_control needs a seed or a non-empty list of seeds")
        taken = {x.feature for x in edits}

        def draw(seed: int) -> list[torch.Tensor]:  # one direction per edit, in order, from this seed
            g = torch.Generator().manual_seed(seed)
            if control_kind == "direction":
                return [_random_like(e.direction, g) for e in edits]
            return [_random_feature_like(e.direction, sae_obj.W_dec.detach(), taken, g) for e in edits]

        per_seed = [draw(seed) for seed in seeds]  # [seed][edit]
        edits = [replace(e, direction=per_seed[0][i] if one else torch.stack([d[i] for d in per_seed]))
                 for i, e in enumerate(edits)]
    outlier = None if skip_outliers is None or mean_resid_norm is None else skip_outliers * float(mean_resid_norm)
    # without a run's mean_resid_norm (a bare or SAELens SAE): the mask's own rule, x the forward's median norm
    median_mult = skip_outliers if outlier is None else None
    return Clamp(model, sae_obj, edits, hp, scope=scope, prompt_len=prompt_len, outlier_norm=outlier,
                 outlier_median_mult=median_mult, record=record)


def _random_like(direction: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    r = torch.randn(direction.shape, generator=g)
    return r * (direction.norm() / r.norm())


def _random_feature_like(direction: torch.Tensor, w_dec: torch.Tensor, taken: set, g: torch.Generator) -> torch.Tensor:
    """A random decoder row other than the clamped features', rescaled to `direction`'s norm."""
    if len(taken - {None}) >= int(w_dec.shape[0]):
        raise UserError("a random-feature control needs a feature that is not clamped; clamp fewer features")
    while True:
        j = int(torch.randint(int(w_dec.shape[0]), (1,), generator=g))
        if j not in taken:
            break
    r = w_dec[j].float().cpu()
    return r * (direction.norm() / r.norm().clamp_min(1e-12))
