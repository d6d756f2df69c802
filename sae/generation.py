"""Batched sampling from a causal LM (left padding, KV cache), shared by `emosae stories`, the
general-corpus script and anything else that writes text with the model."""

from __future__ import annotations

import torch


def chat_prompt(tokenizer, user_text: str, system: str | None = None) -> str:
    """The prompt string for one user turn: the model's chat template if it has one."""
    if not getattr(tokenizer, "chat_template", None):
        return user_text
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user_text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 128, temperature: float = 0.8,
             top_p: float = 0.95, seed: int = 0, batch_size: int = 16, repetition_penalty: float = 1.0,
             ) -> list[str]:
    """Continuations of already-formatted prompts (see `chat_prompt`), one per prompt.
    Each batch is seeded from `seed` and its index, so results do not depend on what ran before."""
    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    out: list[str] = []
    try:
        for b in range(0, len(prompts), batch_size):
            chunk = prompts[b:b + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            torch.manual_seed(seed * 100_003 + b)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                                 temperature=temperature if temperature > 0 else None,
                                 top_p=top_p if temperature > 0 else None, top_k=None,
                                 repetition_penalty=repetition_penalty, pad_token_id=tokenizer.pad_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = old_side
    return [t.strip() for t in out]
