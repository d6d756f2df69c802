"""Batched, per-row-seeded sampling through `model.generate()` and the scoring of continuations.

Each (prompt, seed) row samples from its own torch.Generator (inverse-CDF sampling inside a logits
processor, so `generate()` runs greedy over already-sampled scores): a row's text depends on its
seed, not on what else is in the batch, and a baseline and a clamped run with the same seeds share
their random numbers, which makes their difference much less noisy. (`sae.generation` is the plain
batch sampler for writing corpora; both share its `chat_prompt`.)"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
from tqdm import tqdm

from sae.errors import UserError
from sae.generation import chat_prompt


def format_prompts(tokenizer, prompts: list[str], chat: bool | None = None) -> tuple[list[str], bool]:
    """Apply the chat template when the tokenizer has one (instruct models) unless chat=False.
    The user's text goes in as the user turn, so the template delimits it."""
    use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    if use_chat and not getattr(tokenizer, "chat_template", None):
        raise UserError("this tokenizer has no chat template; drop --chat or use a base-model prompt")
    if not use_chat:
        return list(prompts), False
    return [chat_prompt(tokenizer, p) for p in prompts], True


def check_sampling(temperature: float, top_p: float) -> None:
    """The sampler's settings, checkable before a model loads (a sweep fails in seconds, not minutes)."""
    if temperature < 0 or not 0 < top_p <= 1:
        raise UserError(f"temperature must be >= 0 and top_p in (0, 1] (got {temperature}, {top_p})")


class SeededSampler:
    """A logits processor that samples each row with its own generator (temperature, top-p; one
    uniform per row and step, inverse CDF in vocabulary order) and returns scores where only the
    sampled token is finite, so greedy decoding picks it.

    Top-p keeps every token at least as probable as the least probable member of the smallest set
    reaching top_p (so tokens tied at the edge are kept or dropped together, whatever order a sort
    puts them in). It works on the `top_k` most probable tokens, widening only for a row whose
    nucleus does not fit: sorting and summing the whole vocabulary per row and step was a third of
    `generate()`'s time on CPU (SmolLM2, 49k tokens). The choice equals the full-vocabulary rule's
    (`reference_choice`, held to it by a test)."""

    def __init__(self, seeds: list[int], temperature: float = 1.0, top_p: float = 1.0, top_k: int = 256):
        check_sampling(temperature, top_p)
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k

    def uniforms(self, device: torch.device) -> torch.Tensor:
        return torch.cat([torch.rand(1, generator=g) for g in self.gens]).to(device, torch.float64)

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        if self.temperature == 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits / self.temperature, dim=-1)
        u = self.uniforms(probs.device)
        if self.top_p == 1:
            return _inverse_cdf(probs, u)
        k = min(self.top_k, probs.shape[-1])
        while True:
            top, ids = probs.topk(k, dim=-1)  # descending
            keep = top >= _nucleus_floor(top, self.top_p)
            if k == probs.shape[-1] or not bool(keep[:, -1].any()):  # no kept token beyond the k
                break
            k = min(4 * k, probs.shape[-1])
        # inverse CDF in vocabulary order over the candidates (dropped ones add exact zeros, as
        # they do in the full-vocabulary CDF)
        ids, order = ids.sort(-1)
        pos = _inverse_cdf(top.masked_fill(~keep, 0.0).gather(-1, order), u)
        return ids.gather(-1, pos[:, None])[:, 0]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        choice = self.choose(scores.float())
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, choice[:, None], 0.0)


def _inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row, the first index where the running sum of `weights` (float64, in their order)
    exceeds u x the row's total, u in [0, 1): one draw from the weights. "Exceeds", not "reaches":
    a zero-weight entry is never chosen, even at u = 0."""
    cdf = weights.double().cumsum(-1)
    return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp_max(cdf.shape[-1] - 1)[:, 0]


def _nucleus_floor(sorted_p: torch.Tensor, top_p: float) -> torch.Tensor:
    """[rows, 1]: the probability of the last token of the smallest prefix of `sorted_p`
    (descending) whose sum reaches top_p; the whole prefix when it never does."""
    reached = (sorted_p.cumsum(-1) - sorted_p) >= top_p  # tokens after the set
    last = (~reached).sum(-1, keepdim=True) - 1
    return sorted_p.gather(-1, last)


def reference_choice(sampler: SeededSampler, logits: torch.Tensor) -> torch.Tensor:
    """The sampling rule over the whole vocabulary (full sort, full CDF): the specification
    `SeededSampler.choose` is tested against. Draws the same uniforms from the sampler's generators."""
    if sampler.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / sampler.temperature, dim=-1)
    if sampler.top_p < 1:
        sorted_p = probs.sort(-1, descending=True).values
        probs = probs.masked_fill(probs < _nucleus_floor(sorted_p, sampler.top_p), 0.0)
    return _inverse_cdf(probs, sampler.uniforms(probs.device))


@dataclass
class Batch:
    """Prompts as token ids (no padding) and their sampled continuations (up to and including EOS)."""

    prompt_ids: list[list[int]]
    continuation_ids: list[list[int]]
    texts: list[str]


def tokenize_prompts(tokenizer, texts: list[str], templated: bool) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=not templated)["input_ids"]


def left_padded(rows: list[list[int]], pad: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) for prompts left-padded to one width, as `generate()` wants them."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


@torch.no_grad()
def generate(model, tokenizer, prompt_ids: list[list[int]], seeds: list[int], max_new_tokens: int = 40,
             temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 64,
             context: Callable[[], ContextManager] | ContextManager | None = None, progress: str | None = None) -> Batch:
    """Sample one continuation per (prompt ids, seed) row, left-padded in batches, KV cache on.
    `context` (a clamp, or a function returning a context manager) is entered around each
    `generate()` call."""
    from transformers import GenerationConfig

    if len(prompt_ids) != len(seeds):
        raise ValueError("one seed per prompt row")
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, not {batch_size}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    device = next(model.parameters()).device
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                               pad_token_id=pad, eos_token_id=eos, use_cache=True)
    conts: list[list[int]] = []
    bar = tqdm(total=len(prompt_ids), desc=progress, unit="row", disable=progress is None, leave=False)
    for start in range(0, len(prompt_ids), batch_size):
        rows = prompt_ids[start:start + batch_size]
        ids, mask = left_padded(rows, pad, device)
        width = ids.shape[1]
        sampler = SeededSampler(seeds[start:start + batch_size], temperature, top_p)
        with _context(context):
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg,
                                 logits_processor=[sampler])
        for row in out[:, width:].tolist():
            cut = row.index(eos) + 1 if eos in row else len(row)
            conts.append(row[:cut])
        bar.update(len(rows))
    bar.close()
    texts = [tokenizer.decode(c, skip_special_tokens=True).strip() for c in conts]
    return Batch(prompt_ids=[list(p) for p in prompt_ids], continuation_ids=conts, texts=texts)


def padded(prompt_ids: list[list[int]], cont_ids: list[list[int]], pad: int, device) -> tuple[torch.Tensor, ...]:
    """Rows laid out as generate() makes them: prompt left-padded to one width P, continuation
    after it, right padding. Returns ids, attention mask, position ids, the continuation-token
    mask (over targets 1..W-1) and P, the prompt boundary shared by every row."""
    wp = max(len(p) for p in prompt_ids)
    wc = max(len(c) for c in cont_ids)
    ids, mask, target = [], [], []
    for p, c in zip(prompt_ids, cont_ids):
        ids.append([pad] * (wp - len(p)) + p + c + [pad] * (wc - len(c)))
        mask.append([0] * (wp - len(p)) + [1] * (len(p) + len(c)) + [0] * (wc - len(c)))
        target.append([0] * (wp - 1) + [1] * len(c) + [0] * (wc - len(c)))
    ids_t = torch.tensor(ids, device=device)
    mask_t = torch.tensor(mask, device=device)
    pos = (mask_t.cumsum(-1) - 1).clamp_min(0)
    return ids_t, mask_t, pos, torch.tensor(target, device=device, dtype=torch.bool), wp


def _forward_kwargs(model) -> tuple[bool, str]:
    """(does forward() take `logits_to_keep`, the name of its KV-cache argument): transformers 5
    renamed `past_key_values` to `cache`."""
    params = inspect.signature(model.forward).parameters
    return "logits_to_keep" in params, "cache" if "cache" in params else "past_key_values"


def _continuation_logits(model, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, wp: int) -> torch.Tensor:
    """Logits at positions wp-1..W-2 (those predicting the continuation), one forward over whole
    rows; the LM head skips the prompt where the model allows it."""
    trims, _ = _forward_kwargs(model)
    kw = dict(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    if trims:
        kw["logits_to_keep"] = ids.shape[1] - wp + 1
    return model(**kw).logits[:, -(ids.shape[1] - wp + 1):-1].float()


def _continuation_logits_shared(model, prompt_ids: list[list[int]], ids: torch.Tensor, mask: torch.Tensor,
                                pos: torch.Tensor, wp: int) -> torch.Tensor:
    """The same logits for the *unsteered* model, each distinct prompt run once: sweeps and screens
    score many rows per prompt (samples x settings), and the prompt is about half of every row. Its
    KV cache is copied to the rows that share it, then only the continuations run."""
    trims, cache_kw = _forward_kwargs(model)
    slot: dict[tuple, int] = {}  # prompt -> its row in the prompt-only forward
    first: list[int] = []  # a row holding each distinct prompt
    for i, p in enumerate(prompt_ids):
        if slot.setdefault(tuple(p), len(first)) == len(first):
            first.append(i)
    inv = torch.tensor([slot[tuple(p)] for p in prompt_ids], device=ids.device)
    kw = dict(input_ids=ids[first, :wp], attention_mask=mask[first, :wp], position_ids=pos[first, :wp], use_cache=True)
    if trims:
        kw["logits_to_keep"] = 1
    out = model(**kw)
    cache = out["cache"] if "cache" in out else out["past_key_values"]
    cache.batch_select_indices(inv)
    rest = model(input_ids=ids[:, wp:], attention_mask=mask, position_ids=pos[:, wp:], use_cache=False,
                 **{cache_kw: cache}).logits
    return torch.cat([out.logits[inv, -1:], rest[:, :-1]], 1).float()


@torch.no_grad()
def _context(context) -> ContextManager:
    """A re-enterable context manager (a Clamp) as is; a factory called; None a no-op."""
    if context is None:
        return contextlib.nullcontext()
    if hasattr(context, "__enter__") and not callable(context):
        return context
    if not callable(context):
        raise TypeError(f"context must be a clamp or a function returning a context manager, not {type(context).__name__}")
    return context()


def score(model, tokenizer, batch: Batch, steer: Callable[[int], ContextManager] | None = None,
          batch_size: int = 32) -> dict[str, list[float]]:
    """Per row: summed NLL and token count of the continuation under the unsteered model, and
    (given `steer(prompt_len)`, the same clamp with its prompt boundary fixed) the mean over the
    continuation of KL(steered || unsteered) between next-token distributions."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    if steer is not None and not callable(steer):
        raise TypeError("steer is a function of the prompt length, e.g. lambda pl: clamp(model, run, ..., prompt_len=pl): "
                        "the clamp's prompt boundary must be the padded prompt width")
    out: dict[str, list[float]] = {"nll": [], "n_tokens": [], "kl": []}
    for s in range(0, len(batch.prompt_ids), batch_size):
        p_ids = batch.prompt_ids[s:s + batch_size]
        c_ids = [c or [pad] for c in batch.continuation_ids[s:s + batch_size]]  # empty: scored as 0 tokens
        ids, mask, pos, target, wp = padded(p_ids, c_ids, pad, device)
        for j, c in enumerate(batch.continuation_ids[s:s + batch_size]):
            if not c:
                target[j] = False
        target = target[:, wp - 1:]
        logits = _continuation_logits_shared(model, p_ids, ids, mask, pos, wp)
        picked = logits.gather(-1, ids[:, wp:, None])[..., 0]
        nll = ((logits.logsumexp(-1) - picked) * target).sum(-1)
        n = target.sum(-1)
        out["nll"] += nll.tolist()
        out["n_tokens"] += n.tolist()
        if steer is None:
            out["kl"] += [0.0] * len(p_ids)
            continue
        logp = torch.log_softmax(logits, -1)
        del logits, picked
        with steer(wp):
            lq = torch.log_softmax(_continuation_logits(model, ids, mask, pos, wp), -1)
        kl_t = (lq.exp() * (lq - logp)).sum(-1)
        out["kl"] += ((kl_t * target).sum(-1) / n.clamp_min(1)).tolist()
    return out
