"""TransformerLens-style hook points (`blocks.{L}.hook_resid_post`, ...) on any HF causal LM.

One table maps each architecture to where its blocks, attention, MLP and final norm live; every
hook point is then the input or output of one module. No per-model code paths."""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from sae.errors import UserError

HOOK_KINDS = ("hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out")


@dataclass(frozen=True)
class Arch:
    """Where one architecture keeps its parts, as dotted paths (blocks from the LM, the rest inside
    a block). `attn`/`mlp` are the modules whose output is added to the residual stream."""

    blocks: str
    attn: str
    mlp: str
    final_norm: str


_LLAMA_LIKE = Arch("model.layers", "self_attn", "mlp", "model.norm")
_GEMMA2_LIKE = Arch("model.layers", "post_attention_layernorm", "post_feedforward_layernorm", "model.norm")
ARCHS: dict[str, Arch] = {
    "llama": _LLAMA_LIKE, "mistral": _LLAMA_LIKE, "mixtral": Arch("model.layers", "self_attn", "block_sparse_moe", "model.norm"),
    "qwen2": _LLAMA_LIKE, "qwen3": _LLAMA_LIKE, "gemma": _LLAMA_LIKE, "phi3": _LLAMA_LIKE, "olmo": _LLAMA_LIKE,
    "olmo2": Arch("model.layers", "post_attention_layernorm", "post_feedforward_layernorm", "model.norm"),
    "gemma2": _GEMMA2_LIKE, "gemma3_text": _GEMMA2_LIKE,
    "gpt2": Arch("transformer.h", "attn", "mlp", "transformer.ln_f"),
    "gpt_neox": Arch("gpt_neox.layers", "attention", "mlp", "gpt_neox.final_layer_norm"),
    "phi": Arch("model.layers", "self_attn", "mlp", "model.final_layernorm"),
}


@dataclass(frozen=True)
class HookPoint:
    layer: int
    kind: str  # one of HOOK_KINDS

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.{self.kind}"


def arch_of(model: nn.Module) -> Arch:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ARCHS:
        raise UserError(f"unsupported architecture {model_type!r}; supported: {', '.join(sorted(ARCHS))}")
    return ARCHS[model_type]


def blocks_of(model: nn.Module) -> nn.ModuleList:
    return model.get_submodule(arch_of(model).blocks)


def n_layers(model: nn.Module) -> int:
    return len(blocks_of(model))


def parse_hook(name: str, model: nn.Module) -> HookPoint:
    """Parse a TransformerLens name, or the module-path style SAELens writes for its HF route
    (`model.layers.15` = that block's output = resid_post)."""
    arch = arch_of(model)
    m = re.fullmatch(r"blocks\.(\d+)\.(hook_\w+)", name)
    if m and m.group(2) in HOOK_KINDS:
        hp = HookPoint(int(m.group(1)), m.group(2))
    else:
        m = re.fullmatch(re.escape(arch.blocks) + r"\.(\d+)(?:\.(\w+))?", name)
        sub = {None: "hook_resid_post", arch.attn: "hook_attn_out", arch.mlp: "hook_mlp_out"}
        if not m or m.group(2) not in sub:
            raise UserError(f"unknown hook point {name!r}; use blocks.L.{{{'|'.join(HOOK_KINDS)}}} "
                            f"or {arch.blocks}.L")
        hp = HookPoint(int(m.group(1)), sub[m.group(2)])
    n = n_layers(model)
    if not 0 <= hp.layer < n:
        raise UserError(f"hook layer {hp.layer} is out of range: the model has layers 0..{n - 1}")
    return hp


def module_path(model: nn.Module, hp: HookPoint) -> str:
    """The SAELens HF-route name of a hook point (written beside ours in SAE metadata)."""
    arch = arch_of(model)
    suffix = {"hook_resid_post": "", "hook_resid_pre": "", "hook_attn_out": f".{arch.attn}",
              "hook_mlp_out": f".{arch.mlp}"}[hp.kind]
    return f"{arch.blocks}.{hp.layer}{suffix}"


def _site(model: nn.Module, hp: HookPoint) -> tuple[nn.Module, str]:
    """The module a hook point lives on, and whether it is that module's input or output."""
    arch = arch_of(model)
    block = blocks_of(model)[hp.layer]
    if hp.kind == "hook_resid_pre":
        return block, "input"
    if hp.kind == "hook_resid_post":
        return block, "output"
    return block.get_submodule(arch.attn if hp.kind == "hook_attn_out" else arch.mlp), "output"


def _outside_autocast(fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Callable:
    """`fn` with autocast off: an SAE or a clamp inside a bf16-autocast forward still computes in
    float32 (it gets the activation as the model made it, usually float32 on the residual stream)."""
    def wrapped(x: torch.Tensor):
        if not torch.is_autocast_enabled(x.device.type):
            return fn(x)
        with torch.autocast(x.device.type, enabled=False):
            return fn(x)
    return wrapped


def add_hook(model: nn.Module, hook: str | HookPoint,
             fn: Callable[[torch.Tensor], torch.Tensor | None]) -> torch.utils.hooks.RemovableHandle:
    """Call `fn(activation)` at a hook point; if it returns a tensor, that replaces the activation.

    Activations are [batch, seq, d_model] whatever the module returns around them (tuples, kwargs).
    `fn` runs with autocast off (`_outside_autocast`)."""
    hp = hook if isinstance(hook, HookPoint) else parse_hook(hook, model)
    module, where = _site(model, hp)
    fn = _outside_autocast(fn)
    if where == "input":
        def pre(mod, args, kwargs):
            if args:
                new = fn(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            new = fn(kwargs["hidden_states"])
            return None if new is None else (args, {**kwargs, "hidden_states": new})
        return module.register_forward_pre_hook(pre, with_kwargs=True)

    def post(mod, args, output):
        if isinstance(output, tuple):
            new = fn(output[0])
            return None if new is None else (new, *output[1:])
        return fn(output)
    return module.register_forward_hook(post)


@contextmanager
def replay_prefix(model: nn.Module, layer: int, recorded: list) -> Iterator[None]:
    """Run only the blocks from `layer` on, feeding block `layer` what block `layer - 1` returned in
    an earlier forward over the same rows (`recorded`: empty, to be filled, on the first use).

    For evals that re-run one batch with different edits at one hook point: everything before the
    hook's block is the same every time, so it is computed once. Blocks before `layer` keep their
    modules (hooks, state); only their `forward` is swapped for returning the recording."""
    if layer == 0:
        yield
        return
    blocks = blocks_of(model)
    if not recorded:
        handle = blocks[layer - 1].register_forward_hook(lambda mod, args, out: recorded.append(out))
        try:
            yield
        finally:
            handle.remove()
        return
    saved = [b.__dict__.get("forward") for b in blocks[:layer]]
    for b in blocks[:layer]:
        b.forward = lambda *args, **kwargs: recorded[0]
    try:
        yield
    finally:
        for b, f in zip(blocks[:layer], saved):
            if f is None:
                del b.forward
            else:
                b.forward = f


class _StopForward(Exception):
    pass


@contextmanager
def hooks(model: nn.Module, fns: dict[str, Callable]) -> Iterator[None]:
    handles = [add_hook(model, name, fn) for name, fn in fns.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def run_to_hooks(model: nn.Module, hook_names: list[str], **forward_kwargs) -> dict[str, torch.Tensor]:
    """Run the model only as far as the deepest hook point and return the activations there.

    The forward is cut by raising once every requested activation is captured, so later layers
    (and the unembedding) never run."""
    wanted = list(dict.fromkeys(hook_names))
    out: dict[str, torch.Tensor] = {}

    def capture(name):
        def fn(x):
            out[name] = x
            if len(out) == len(wanted):
                raise _StopForward
        return fn

    with hooks(model, {n: capture(n) for n in wanted}):
        try:
            model(**forward_kwargs, use_cache=False)
        except _StopForward:
            pass
    missing = [n for n in wanted if n not in out]
    if missing:
        raise RuntimeError(f"hook points never fired: {missing}")
    return out


def final_norm(model: nn.Module) -> nn.Module:
    return model.get_submodule(arch_of(model).final_norm)
