"""What the browser does with a model loaded (`emosae browse RUN --model SPEC`): which features
fire on a text, and the clamp playground (baseline vs clamped continuation from the same seed).

The playground uses `features.clamp` when that module is importable; without it the page hides
the panel. Model calls are serialized with a lock (the server is threaded; the model is not)."""

from __future__ import annotations

import importlib
import logging
import threading
from pathlib import Path
from typing import Any

import torch

from sae.errors import UserError

from features.browser.blocks import sig

log = logging.getLogger("emosae")
MAX_CHARS = 4000
MAX_TOKENS = 256
MAX_NEW_TOKENS = 80
TOP_FEATURES = 30


def _str(req: dict, key: str, limit: int, default: str | None = None) -> str:
    v = req.get(key, default)
    if not isinstance(v, str) or not v.strip():
        raise UserError(f"{key!r} must be a non-empty string")
    if len(v) > limit:
        raise UserError(f"{key!r} is longer than {limit} characters; shorten it")
    return v


def _int(req: dict, key: str, default: int, lo: int, hi: int) -> int:
    v = req.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise UserError(f"{key!r} must be an integer in {lo}..{hi}")
    return v


class Live:
    """A model and the run's SAE, loaded once for the server's lifetime."""

    def __init__(self, run_dir: str | Path, model_spec: str = "auto", device: str = "cpu"):
        from labeling.scoring import load_model_for, outlier_mult_for
        from sae.architectures import load_sae
        from sae.hooks import parse_hook

        run_dir = Path(run_dir)
        self.clamp_mod: Any = None
        self.assets: Any = None
        try:
            clamp_mod = importlib.import_module("features.clamp")
            self.assets = clamp_mod.load_run(run_dir, device=device)
            self.clamp_mod = clamp_mod
            self.sae = self.assets.sae
        except ImportError as e:
            log.info("browse: features.clamp is not available (%s); the clamp playground is hidden", e)
            self.sae = load_sae(run_dir, device=device)
        self.lm = load_model_for(self.sae, None if model_spec == "auto" else model_spec, device)
        d_model = int(self.lm.model.config.hidden_size)
        if int(self.sae.W_dec.shape[1]) != d_model:
            raise UserError(f"the SAE reads d_in={self.sae.W_dec.shape[1]} but {self.lm.model_id} has hidden size "
                            f"{d_model}; give the --model the SAE was trained on")
        self.hook = parse_hook(self.sae.cfg.hook_name, self.lm.model)
        self.outlier_mult = outlier_mult_for(run_dir, self.sae)  # the run's own mask setting
        self.lock = threading.Lock()

    def caps(self) -> dict:
        return {"model": self.lm.model_id, "hook": self.hook.name, "fire": True, "clamp": self.clamp_mod is not None,
                "max_chars": MAX_CHARS, "max_new_tokens": MAX_NEW_TOKENS}

    @torch.inference_mode()
    def fire(self, req: dict) -> dict:
        """Per-token activations of the features that fire most on `text` (masked positions —
        special tokens, the first token, norm outliers — count for nothing, as everywhere)."""
        from sae.data import position_mask
        from sae.hooks import run_to_hooks

        text = _str(req, "text", MAX_CHARS)
        tok = self.lm.tokenizer
        ids = tok(text, add_special_tokens=False)["input_ids"][:MAX_TOKENS]
        if not ids:
            raise UserError("the text has no tokens")
        x = torch.tensor([ids], device=self.lm.device)
        with self.lock:
            acts = run_to_hooks(self.lm.model, [self.hook.name], input_ids=x)[self.hook.name][0]
            f = self.sae.encode(acts.to(self.sae.W_dec.dtype)).float()
        keep = position_mask(x[0], torch.arange(len(ids), device=x.device), tok.all_special_ids, acts,
                             self.outlier_mult)
        f = f * keep[:, None]
        peak = f.max(dim=0).values
        k = min(TOP_FEATURES, int((peak > 0).sum()))
        vals, idx = peak.topk(k) if k else (peak[:0], peak[:0].long())
        return {"tokens": [tok.decode([i]) for i in ids], "masked": (~keep).tolist(),
                "truncated": len(tok(text, add_special_tokens=False)["input_ids"]) > MAX_TOKENS,
                "features": [{"id": int(i), "max": sig(float(v), 4), "acts": sig(f[:, i].cpu().numpy(), 3)}
                             for v, i in zip(vals.tolist(), idx.tolist())]}

    def clamp(self, req: dict) -> dict:
        """Baseline and clamped continuations of `prompt` from the same seed."""
        if self.clamp_mod is None:
            raise UserError("clamping is not available in this install (features.clamp is missing)")
        from features.generation import format_prompts, generate, tokenize_prompts

        prompt = _str(req, "prompt", MAX_CHARS)
        feature = _int(req, "feature", -1, 0, int(self.sae.W_dec.shape[0]) - 1)
        mode = req.get("mode", "set")
        if mode not in ("set", "add", "scale", "ablate"):
            raise UserError("'mode' must be one of set, add, scale, ablate")
        strength = req.get("strength", "4x")
        if not isinstance(strength, (str, int, float)) or isinstance(strength, bool) or len(str(strength)) > 32:
            raise UserError("'strength' must be a number or a string such as 4x or 0.05r")
        seed = _int(req, "seed", 0, 0, 2**31 - 1)
        n_new = _int(req, "max_new_tokens", 40, 1, MAX_NEW_TOKENS)
        spec = "ablate" if mode == "ablate" else f"{mode}={strength}"
        tok = self.lm.tokenizer
        with self.lock:
            c = self.clamp_mod.clamp(self.lm.model, self.assets, {feature: spec}, scope="all")
            texts, chat = format_prompts(tok, [prompt])
            ids = tokenize_prompts(tok, texts, chat)
            kw = dict(max_new_tokens=n_new, temperature=0.7, top_p=0.95)
            base = generate(self.lm.model, tok, ids, [seed], **kw).texts[0]
            clamped = generate(self.lm.model, tok, ids, [seed], context=lambda: c, **kw).texts[0]
        return {"prompt": prompt, "seed": seed, "baseline": base, "clamped": clamped, "settings": c.describe(),
                "summary": str(c)}
