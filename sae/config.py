"""The training config: a small YAML file nested by concern (model, data, sae|saes, train, log), one
dataclass per concern, plain values. `--set a.b=value` overrides any key; unknown keys are errors
that name the nearest valid key. The resolved config (every default filled in) is written to
RUN/config.yaml, so `--resume RUN` needs nothing else."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from sae.architectures import ARCHITECTURES
from sae.errors import UserError
from sae.models import AUTOCAST_MODES, PREPACK_MODES

DATA_MODES = ("cache", "stream")
B_DEC_INITS = ("geometric_median", "mean", "zeros")
OPTIMIZERS = ("adam", "signum")


@dataclass
class ModelConfig:
    name: str = "smollm2-135m"  # embedded name, hub id, local HF directory or .gguf file
    device: str = "auto"  # auto (cuda when present, else cpu) | cpu | cuda | cuda:N
    dtype: str = "float32"  # the LM's weights
    # auto: bf16 autocast on CUDA, float32 on CPU | bf16: every LM forward under bf16 autocast (a CPU
    # without native bf16 falls back to float32) | off: never. Written resolved (bf16/off) to RUN/config.yaml.
    autocast: str = "auto"
    compile: bool = False  # torch.compile the blocks up to the deepest hook (CPU: pays only on long runs, warm cache)
    # auto: float32 linears on CPU run from oneDNN-prepacked weights (1.3x the forward here; same numbers
    # to float rounding; not with compile or autocast) | on | off: plain F.linear
    prepack: str = "auto"


@dataclass
class DataConfig:
    dataset: str = "labeling/data/general_corpus.jsonl.gz"  # local .jsonl/.txt/.parquet(.gz) or hub id
    text_field: str = "text"
    context_size: int = 256  # tokens per packed row
    token_budget: int = 4096  # tokens per LM forward batch
    tokens: int = 250_000  # text tokens harvested for training (masked positions are dropped after)
    heldout_tokens: int = 8192  # text tokens read first and kept out of training, for the evals
    outlier_mult: float | None = 10.0  # mask positions whose norm exceeds this x the median
    mode: str = "cache"  # cache: harvest to disk, then train from it (exact resume) | stream: no disk
    cache: str | None = None  # cache directory; none = under $EMOSAE_CACHE/activations/<key>
    cache_dtype: str = "float32"
    shuffle: bool = True
    buffer_tokens: int = 65536  # stream mode: shuffle buffer capacity (activation rows)


@dataclass
class SAESpec:
    name: str | None = None  # directory name under RUN/ when several SAEs are trained
    arch: str = "topk"  # topk | batchtopk | jumprelu | standard
    hook: str = "blocks.15.hook_resid_post"
    d_sae: int = 4608
    k: int | None = 32  # topk / batchtopk: active latents per token
    l1_coeff: float = 1.0  # standard: L1 penalty on f * ||W_dec row|| (SAELens's units)
    l0_coeff: float = 1.0  # jumprelu: L0 penalty through a straight-through estimator (SAELens's units)
    jumprelu_bandwidth: float = 0.05  # jumprelu: width of the STE's rectangle kernel
    jumprelu_init_threshold: float = 0.01
    lr: float | None = None  # overrides train.lr for this SAE


@dataclass
class TrainConfig:
    batch_size: int = 4096  # activation rows per optimizer step, over all ranks
    optimizer: str = "adam"  # adam (warm-up + decay) | signum (schedule-free sign descent, sparsify's default)
    lr: float | None = None  # none = sparsify's rule: (adam 2e-4 | signum 5e-3) / sqrt(d_sae / 2^14)
    momentum: float = 0.95  # signum's schedule-free interpolation
    warmup_steps: int = 50
    decay_start: float = 0.8  # fraction of training after which lr decays linearly...
    lr_end: float = 0.0  # ...to this fraction of lr
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    grad_clip: float | None = 1.0  # max global grad norm; none = off
    auxk_coeff: float = 0.03125  # AuxK loss weight (Gao et al.: 1/32); 0 = off
    auxk_k: int | None = None  # dead latents used by AuxK; none = d_in / 2
    dead_tokens: int = 10_000_000  # a latent is dead after this many tokens without firing
    b_dec_init: str = "geometric_median"  # geometric_median | mean | zeros
    normalize: bool = True  # train on x * sqrt(d_in)/E||x||; folded into the weights on save
    sparse: bool = True  # TopK/BatchTopK: sparse encoder backward + decoder (kernels.py)
    batchtopk_threshold_lr: float = 0.01  # EMA rate of BatchTopK's inference threshold
    epochs: int = 1  # passes over the cache
    seed: int = 0
    device: str = "auto"  # where the SAEs train; auto = the model's device
    checkpoint_every_tokens: int = 1_000_000
    keep_checkpoints: int = 2
    eval_every_steps: int = 100
    max_bad_steps: int = 10  # stop after this many non-finite steps
    ce_eval: bool = True  # CE-loss score at the end (runs the whole model on held-out text)
    ce_tokens: int = 4096  # held-out text tokens for the CE-loss score
    threads: int | None = None  # torch CPU threads; none = torch's default


@dataclass
class WandbConfig:
    project: str | None = None  # set to turn wandb logging on
    entity: str | None = None
    name: str | None = None
    mode: str | None = None  # online | offline | disabled; none = wandb's default (WANDB_MODE)
    every_steps: int = 10


@dataclass
class LogConfig:
    progress: bool = True  # the progress bar on stderr
    every_steps: int = 10  # training-history rows in metrics.json and curves.png
    curves: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    saes: list[SAESpec] = field(default_factory=lambda: [SAESpec()])
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    multi: bool = False  # written as `saes:` (one run dir per SAE) rather than `sae:`

    def to_dict(self) -> dict:
        d = asdict(self)
        multi = d.pop("multi")
        saes = d.pop("saes")
        out = {"model": d["model"], "data": d["data"]}
        if multi:
            out["saes"] = saes
        else:
            out["sae"] = saes[0]
        out["train"], out["log"] = d["train"], d["log"]
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def for_sae(self, i: int) -> "Config":
        """The config of one SAE of a multi-SAE run (written to RUN/<name>/config.yaml)."""
        return dataclasses.replace(self, saes=[self.saes[i]], multi=False)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "log": LogConfig}


def _keys(cls) -> list[str]:
    return [f.name for f in fields(cls)]


def _suggest(key: str, options: list[str]) -> str:
    near = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    return f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(options)}"


def _all_paths(cls, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            out += _all_paths(t, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check/convert one YAML value against a field type (int, float, str, bool, X | None, list)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], path)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{path} must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        if not isinstance(value, bool):
            raise UserError(f"{path} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, str):
            try:
                value = float(value.replace("_", ""))
            except ValueError:
                raise UserError(f"{path} must be an integer, got {value!r}") from None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{path} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value.replace("_", ""))
            except ValueError:
                raise UserError(f"{path} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{path} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise UserError(f"{path} must be a string, got {value!r}")
        if isinstance(value, bool):  # YAML 1.1 reads a bare off/on (model.autocast: off) as a boolean
            return "on" if value else "off"
        return str(value)
    raise AssertionError(f"unhandled type {tp} for {path}")


def _build(cls, raw: Any, path: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{path or 'config'} must be a mapping of keys to values, got {raw!r}")
    hints = typing.get_type_hints(cls)
    valid = _keys(cls)
    kwargs = {}
    for key, value in raw.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in valid:
            raise UserError(f"unknown key {full!r} in the config{_suggest(str(key), valid)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, full)
        else:
            kwargs[key] = _coerce(value, tp, full)
    return cls(**kwargs)


def from_dict(raw: dict) -> Config:
    """Build and validate a Config from a parsed YAML mapping."""
    if not isinstance(raw, dict):
        raise UserError("the config file must be a YAML mapping with model, data, sae|saes, train, log")
    top = ["model", "data", "sae", "saes", "train", "log"]
    for key in raw:
        if key not in top:
            raise UserError(f"unknown section {key!r} in the config{_suggest(str(key), top)}")
    if "sae" in raw and "saes" in raw:
        raise UserError("the config has both `sae:` and `saes:`; use `sae:` for one SAE or `saes:` for a list")
    kwargs = {name: _build(cls, raw.get(name), name) for name, cls in SECTIONS.items()}
    if "saes" in raw:
        if not isinstance(raw["saes"], list) or not raw["saes"]:
            raise UserError("`saes:` must be a non-empty list of SAE specs (each like `sae:`)")
        saes = [_build(SAESpec, s, f"saes[{i}]") for i, s in enumerate(raw["saes"])]
        multi = True
    else:
        saes = [_build(SAESpec, raw.get("sae"), "sae")]
        multi = False
    cfg = Config(saes=saes, multi=multi, **kwargs)
    validate(cfg)
    return cfg


def _name(spec: SAESpec) -> str:
    hook = spec.hook.replace("blocks.", "L").replace(".hook_", "_").replace(".", "_")
    k = f"-k{spec.k}" if spec.arch in ("topk", "batchtopk") else ""
    return f"{spec.arch}-{spec.d_sae}{k}-{hook}"


def validate(cfg: Config) -> None:
    """Value checks that need no model (hook points are checked once the model is loaded)."""
    d, t = cfg.data, cfg.train
    if cfg.model.autocast not in AUTOCAST_MODES:
        raise UserError(f"model.autocast must be one of {', '.join(AUTOCAST_MODES)}, got {cfg.model.autocast!r}"
                        f"{_suggest(str(cfg.model.autocast), list(AUTOCAST_MODES))}")
    if cfg.model.prepack not in PREPACK_MODES:
        raise UserError(f"model.prepack must be one of {', '.join(PREPACK_MODES)}, got {cfg.model.prepack!r}"
                        f"{_suggest(str(cfg.model.prepack), list(PREPACK_MODES))}")
    if d.mode not in DATA_MODES:
        raise UserError(f"data.mode must be one of {', '.join(DATA_MODES)}, got {d.mode!r}")
    if d.cache_dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"data.cache_dtype must be float32, bfloat16 or float16, got {d.cache_dtype!r}")
    for key, v, lo in (("data.context_size", d.context_size, 2), ("data.token_budget", d.token_budget, 1),
                       ("data.tokens", d.tokens, 1), ("data.heldout_tokens", d.heldout_tokens, 0),
                       ("train.batch_size", t.batch_size, 1), ("train.warmup_steps", t.warmup_steps, 0),
                       ("train.dead_tokens", t.dead_tokens, 1),
                       ("train.epochs", t.epochs, 1), ("train.checkpoint_every_tokens", t.checkpoint_every_tokens, 1),
                       ("train.keep_checkpoints", t.keep_checkpoints, 1), ("train.eval_every_steps", t.eval_every_steps, 1),
                       ("train.max_bad_steps", t.max_bad_steps, 0), ("train.ce_tokens", t.ce_tokens, 0),
                       ("log.every_steps", cfg.log.every_steps, 1), ("log.wandb.every_steps", cfg.log.wandb.every_steps, 1)):
        if v < lo:
            raise UserError(f"{key} must be >= {lo}, got {v}")
    if d.mode == "stream" and d.buffer_tokens < 2 * t.batch_size:
        raise UserError(f"data.buffer_tokens ({d.buffer_tokens}) must hold at least two batches "
                        f"(2 x train.batch_size = {2 * t.batch_size})")
    if not 0.0 <= t.decay_start <= 1.0:
        raise UserError(f"train.decay_start is a fraction of training in 0..1, got {t.decay_start}")
    if not 0.0 <= t.lr_end <= 1.0:
        raise UserError(f"train.lr_end is a fraction of the peak lr in 0..1, got {t.lr_end}")
    if len(t.betas) != 2 or not all(0.0 <= b < 1.0 for b in t.betas):
        raise UserError(f"train.betas must be two numbers in [0, 1), got {t.betas}")
    if t.optimizer not in OPTIMIZERS:
        raise UserError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {t.optimizer!r}"
                        f"{_suggest(str(t.optimizer), list(OPTIMIZERS))}")
    if not 0.0 < t.momentum < 1.0:
        raise UserError(f"train.momentum must be in (0, 1), got {t.momentum}")
    if t.b_dec_init not in B_DEC_INITS:
        raise UserError(f"train.b_dec_init must be one of {', '.join(B_DEC_INITS)}, got {t.b_dec_init!r}")
    if t.lr is not None and t.lr <= 0:
        raise UserError(f"train.lr must be positive, got {t.lr}")
    if cfg.log.wandb.mode not in (None, "online", "offline", "disabled"):
        raise UserError(f"log.wandb.mode must be online, offline or disabled, got {cfg.log.wandb.mode!r}")
    names = set()
    for i, s in enumerate(cfg.saes):
        where = f"saes[{i}]" if cfg.multi else "sae"
        if s.arch not in ARCHITECTURES:
            near = _suggest(s.arch, list(ARCHITECTURES))
            raise UserError(f"{where}.arch {s.arch!r} is not an architecture{near}")
        if s.d_sae < 1:
            raise UserError(f"{where}.d_sae must be >= 1, got {s.d_sae}")
        if s.arch in ("topk", "batchtopk"):
            if not s.k or s.k < 1:
                raise UserError(f"{where}.k must be set (>= 1) for a {s.arch} SAE")
            if s.k > s.d_sae:
                raise UserError(f"{where}.k ({s.k}) cannot exceed d_sae ({s.d_sae})")
        else:
            s.k = None  # only TopK-style SAEs have a k
        if s.lr is not None and s.lr <= 0:
            raise UserError(f"{where}.lr must be positive, got {s.lr}")
        if s.name is None:
            s.name = _name(s)
        if not s.name or "/" in s.name or s.name.startswith(".") or s.name in ("checkpoints", "sae"):
            raise UserError(f"{where}.name {s.name!r} cannot be a directory name; use letters, digits, - and _")
        if s.name in names:
            raise UserError(f"two SAEs are named {s.name!r}; give each entry of saes: a distinct name")
        names.add(s.name)


def _set(raw: dict, dotted: str, value: Any) -> None:
    """Apply one `a.b=value` override to the raw mapping (list entries by index: saes.0.k)."""
    parts = dotted.split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(f"--set {dotted}: {'.'.join(parts[:i])} is a list of {len(node)}; "
                                f"index it with 0..{len(node) - 1}")
            part = int(part)
        if last:
            node[part] = value
            return
        if isinstance(node, dict) and (part not in node or node[part] is None):
            if part == "saes":
                raise UserError(f"--set {dotted}: the config has no `saes:` list; use sae.<key>")
            node[part] = {}
        node = node[part]
        if not isinstance(node, (dict, list)):
            raise UserError(f"--set {dotted}: {'.'.join(parts[: i + 1])} is a value, not a section")


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    out = []
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: write it as section.key=value (e.g. train.lr=3e-4)")
        key, _, text = item.partition("=")
        key = key.strip()
        if not key:
            raise UserError(f"--set {item!r}: the key is empty; write it as section.key=value")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        out.append((key, value))
    return out


def _check_override_key(raw: dict, key: str) -> None:
    parts = key.split(".")
    top = ["model", "data", "sae", "saes", "train", "log"]
    if parts[0] not in top:
        raise UserError(f"--set {key}: unknown section {parts[0]!r}{_suggest(parts[0], top)}")
    if parts[0] == "sae" and "saes" in raw:
        raise UserError(f"--set {key}: this config has a `saes:` list; use saes.N.{'.'.join(parts[1:])}")
    cls = {"sae": SAESpec, **SECTIONS}.get(parts[0])
    rest = parts[1:]
    if parts[0] == "saes":
        cls, rest = SAESpec, parts[2:]
    if not rest:
        return
    valid = _all_paths(cls)
    path = ".".join(rest)
    if path not in valid:
        raise UserError(f"--set {key}: unknown key {path!r} in {parts[0]}{_suggest(path, valid)}")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when `path` is None), apply `--set` overrides, validate."""
    raw: dict = {}
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"config file {path} does not exist; see configs/ for examples")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
        if not isinstance(raw, dict):
            raise UserError(f"{path}: the config must be a YAML mapping with model, data, sae|saes, train, log")
    for key, value in parse_overrides(overrides):
        _check_override_key(raw, key)
        _set(raw, key, value)
    cfg = from_dict(raw)
    if path is not None:
        cfg.data.dataset = _beside_config(cfg.data.dataset, Path(path).expanduser())
    return cfg


def _beside_config(dataset: str, config: Path) -> str:
    """A relative dataset path that is not there from the working directory is looked up beside the
    config, in the project above its folder (the shipped presets name `labeling/data/...`), and in
    emosae's own source tree, so `emosae train --config .../configs/demo-cpu.yaml` works from anywhere."""
    rel = Path(dataset).expanduser()
    if rel.is_absolute() or rel.exists():
        return dataset
    for base in (config.parent, config.parent.parent, Path(__file__).resolve().parents[1]):
        if (base / rel).exists():
            return str((base / rel).resolve())
    return dataset


def default_lr(d_sae: int, optimizer: str = "adam") -> float:
    """sparsify's rule for TopK SAEs: 2e-4 (Adam) or 5e-3 (signum) at 16k latents, scaled by 1/sqrt(width)."""
    return (5e-3 if optimizer == "signum" else 2e-4) / (d_sae / 2**14) ** 0.5
