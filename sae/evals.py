"""SAE evals on held-out data: THE one FVE function, the sparsity numbers, and the CE-loss score.

Everything runs on raw activations (the saved SAE has its normaliser folded in) at the positions
the one position mask keeps. Every tool compared in scripts/bench_train.py goes through `fve`."""

from __future__ import annotations

from typing import Callable

import torch

from sae.data import TokenBatch, position_mask
from sae.harvest import mask_dtype, special_ids
from sae.hooks import add_hook, parse_hook, replay_prefix

DENSE_THRESHOLD = 0.1  # a latent is `dense` when active on more than 10% of tokens


def fve(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Fraction of variance explained: 1 - sum||x - x_hat||^2 / sum||x - mean(x)||^2 over the rows
    of x (raw, masked, held-out activations). Float64 sums; the one definition for every tool."""
    x, x_hat = x.double(), x_hat.double()
    resid = (x - x_hat).pow(2).sum()
    total = (x - x.mean(0)).pow(2).sum()
    return float(1.0 - resid / total)


@torch.no_grad()
def reconstruct(encode: Callable, decode: Callable, x: torch.Tensor, batch: int = 4096
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_hat, per-latent activation counts) of any encode/decode pair, in batches."""
    outs, counts = [], None
    for i in range(0, x.shape[0], batch):
        f = encode(x[i:i + batch])
        outs.append(decode(f).float().cpu())
        c = (f > 0).sum(0).cpu()
        counts = c if counts is None else counts + c
    return torch.cat(outs), counts


@torch.no_grad()
def evaluate(encode: Callable, decode: Callable, x: torch.Tensor, batch: int = 4096) -> dict:
    """fve, mse (mean squared error per element), l0 (active latents per token), dead_heldout
    (fraction never active on these rows), dense (fraction active on > 10% of them),
    mean_resid_norm (mean L2 norm of x)."""
    x = x.float()
    x_hat, counts = reconstruct(encode, decode, x, batch)
    n = x.shape[0]
    return {"fve": fve(x, x_hat), "mse": float((x - x_hat).pow(2).mean()),
            "l0": float(counts.sum() / n), "dead_heldout": float((counts == 0).float().mean()),
            "dense": float((counts > DENSE_THRESHOLD * n).float().mean()),
            "mean_resid_norm": float(x.norm(dim=-1).mean())}


def evaluate_sae(sae, x: torch.Tensor, batch: int = 4096) -> dict:
    device = sae.W_enc.device
    return evaluate(lambda a: sae.encode(a.to(device)), sae.decode, x, batch)


@torch.no_grad()
def _ce(model, batch: TokenBatch) -> tuple[float, int]:
    """Summed next-token cross-entropy within each document segment, and the number of targets."""
    logits = model(**batch.forward_kwargs(mask_dtype(model)), use_cache=False).logits.float()
    same = batch.doc_ids[:, 1:] == batch.doc_ids[:, :-1]
    lp = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                           batch.input_ids[:, 1:].reshape(-1), reduction="none")
    return float(lp[same.reshape(-1)].sum()), int(same.sum())


@torch.no_grad()
def ce_loss_score(model, tokenizer, sae, batch: TokenBatch, keep: torch.Tensor | None = None,
                  outlier_mult: float | None = 10.0, rows_per_forward: int | None = None,
                  share_prefix: bool = True) -> dict:
    """CE-loss score of `sae` spliced in at its hook on held-out text: the SAE's reconstruction
    replaces the activation at the positions the one mask keeps (masked positions untouched);
    (CE_zero_ablation - CE_sae) / (CE_zero_ablation - CE_clean), with the three CEs. `keep` is the
    position mask stored at harvest time; without it the mask is recomputed here.

    The three passes differ only from the hook's block on, so with `share_prefix` the blocks before
    it run once per chunk of rows (the clean pass) and the other two replay their output: the same
    numbers, about a third less work at a mid-depth hook."""
    device = next(model.parameters()).device
    specials = special_ids(tokenizer) if keep is None else None
    rows_per_forward = rows_per_forward or max(1, 4096 // batch.input_ids.shape[1])
    layer = parse_hook(sae.hook_name, model).layer if share_prefix else 0
    state: dict = {}

    def splice(mode: str):
        def fn(act: torch.Tensor):
            if mode == "clean":
                return None
            keep = state["keep"]
            if keep is None:
                keep = position_mask(state["ids"], state["pos"], specials, act, outlier_mult)
            new = torch.zeros_like(act) if mode == "zero" else sae(act.float()).to(act.dtype)
            return torch.where(keep[..., None], new, act)
        return fn

    modes = ("clean", "sae", "zero")
    loss_sums, count = dict.fromkeys(modes, 0.0), 0
    for i in range(0, batch.input_ids.shape[0], rows_per_forward):
        part = TokenBatch(*(t[i:i + rows_per_forward].to(device) for t in
                            (batch.input_ids, batch.doc_ids, batch.positions)))
        state.update(ids=part.input_ids, pos=part.positions,
                     keep=None if keep is None else keep[i:i + rows_per_forward].to(device))
        recorded: list = []
        for mode in modes:  # clean first: it records the shared prefix
            handle = add_hook(model, sae.hook_name, splice(mode))
            try:
                with replay_prefix(model, layer, recorded):
                    s, c = _ce(model, part)
            finally:
                handle.remove()
            loss_sums[mode] += s
        count += c
    clean, with_sae, zero = (loss_sums[m] / max(1, count) for m in modes)
    score = (zero - with_sae) / (zero - clean) if zero != clean else float("nan")
    return {"ce_clean": clean, "ce_sae": with_sae, "ce_zero": zero, "ce_loss_score": score}
