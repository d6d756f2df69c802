"""Passage scores: one forward per passage to the hook, THE position mask, one `skip_tokens` rule.

Labels, emotion vectors and the monitor all score text the same way, here:

1. each passage is run alone (one padded row each, a block-diagonal mask keeps padding out of
   attention), only as far as the hook layer;
2. `sae.data.position_mask` drops special tokens, the first token (the attention sink) and norm
   outliers (> `outlier_mult` x the median norm of the batch);
3. positions < `skip_tokens` of each passage are dropped as well (the skip rule; the paper averages
   from token 50 of long stories, ours are ~120 tokens);
4. what is left is reduced per passage (max, mean or last kept token) or returned per token.

DEFAULT_SKIP = 4: position 0 is the sink (masked anyway) and positions 1-3 are the opening words
("I had the", "Marcus pulled the"), which carry no emotion yet and sit closest to the sink (at
layer 15 of the embedded model their median norms are 1.17, 1.06 and 1.05 x the median of kept
tokens). Dropping them keeps 97% of the tokens of a 90-word passage. `scripts/skip_tokens.py`
measures it: held-out macro AUROC of the emotion vectors (layer 15) is 0.933 at skip 0, 0.936 at
4, 0.938 at 16 and 0.932 at 32 (22, 22, 23 and 21 emotions >= 0.9) - flat up to 16, so the
short skip that removes the sink-adjacent tokens and keeps almost all text is the default.

The raw residuals of kept tokens (float16) can be cached on disk keyed by model, hook, mask
setting and the texts, so labels, statistics and vectors share one forward over a corpus."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sae.data import TokenBatch, position_mask
from sae.errors import UserError
from sae.harvest import forward_acts, special_ids
from sae.io import atomic_path

log = logging.getLogger("emosae")

DEFAULT_SKIP = 4
DEFAULT_OUTLIER_MULT = 10.0
REDUCES = ("max", "mean", "last", "none")
CACHE_VERSION = 1


@dataclass
class PassageTokens:
    """Raw residuals of every kept token of a list of passages at one hook.

    `acts` [N, d_model] float16, kept tokens only, ordered by passage then position;
    `passage` / `position` [N] int64 say where each came from; `ids` [total] int32 holds every
    token of every passage (masked ones too) and `offsets` [n+1] where each passage starts in it."""

    acts: torch.Tensor
    passage: torch.Tensor
    position: torch.Tensor
    ids: torch.Tensor
    offsets: torch.Tensor
    meta: dict

    @property
    def n_passages(self) -> int:
        return int(self.offsets.numel() - 1)

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def tokens_of(self, i: int) -> list[int]:
        return self.ids[self.offsets[i]:self.offsets[i + 1]].tolist()

    def select(self, skip_tokens: int) -> torch.Tensor:
        """Boolean [N]: kept tokens that also survive the skip rule."""
        return self.position >= skip_tokens


@dataclass
class TokenActs:
    """Per-token values of one passage (`reduce="none"`): `ids` [L] every token of the passage,
    `acts` [L, d] (zeros where not kept), `keep` [L] bool (mask and skip rule)."""

    ids: list[int]
    acts: torch.Tensor
    keep: torch.Tensor


def _device_of(lm) -> torch.device:
    return next(lm.model.parameters()).device


def _batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Passage indices grouped (longest first) so rows x longest row stays within the budget."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        width = lengths[cur[0]] if cur else lengths[i]
        if cur and (len(cur) + 1) * width > batch_tokens:
            groups.append(cur)
            cur = []
        cur.append(i)
    if cur:
        groups.append(cur)
    return groups


def _padded_batch(docs: list[list[int]], pad_id: int) -> TokenBatch:
    """One passage per row, right-padded; padding is its own segment so it never enters attention."""
    width = max(len(d) for d in docs)
    ids = torch.full((len(docs), width), pad_id, dtype=torch.long)
    segs = torch.ones((len(docs), width), dtype=torch.long)
    pos = torch.zeros((len(docs), width), dtype=torch.long)
    for r, d in enumerate(docs):
        ids[r, :len(d)] = torch.tensor(d)
        segs[r, :len(d)] = 0
        pos[r, :len(d)] = torch.arange(len(d))
        pos[r, len(d):] = torch.arange(width - len(d))
    return TokenBatch(ids, segs, pos)


def tokenize(tokenizer, texts: Sequence[str], max_tokens: int | None = None) -> list[list[int]]:
    """Token ids of each text (no BOS: the tokenizer adds none and the mask drops position 0)."""
    enc = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    if max_tokens is not None:
        long = sum(len(e) > max_tokens for e in enc)
        if long:
            log.warning("%d text(s) longer than %d tokens were truncated", long, max_tokens)
        enc = [e[:max_tokens] for e in enc]
    return enc


@torch.no_grad()
def run_passages(lm, texts: Sequence[str], hook: str, outlier_mult: float | None = DEFAULT_OUTLIER_MULT,
                 batch_tokens: int = 4096, max_tokens: int | None = 2048, progress: bool = True) -> PassageTokens:
    """Forward every passage to `hook` and keep the masked residuals (float16, on the host)."""
    from tqdm import tqdm

    if not texts:
        raise UserError("no texts to score; give at least one passage")
    docs = tokenize(lm.tokenizer, texts, max_tokens)
    empty = [i for i, d in enumerate(docs) if not d]
    if empty:
        raise UserError(f"passage {empty[0] + 1} of {len(texts)} is empty after tokenization; remove empty texts")
    device = _device_of(lm)
    specials = special_ids(lm.tokenizer)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.tokenizer.eos_token_id
    lengths = [len(d) for d in docs]
    per_passage: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    bar = tqdm(total=sum(lengths), unit="tok", desc=f"forward {hook}", disable=None if progress else True)
    for group in _batches(lengths, batch_tokens):
        batch = _padded_batch([docs[i] for i in group], pad).to(device)
        acts = forward_acts(lm.model, batch, [hook])[hook]
        keep = position_mask(batch.input_ids, batch.positions, specials, acts, outlier_mult) & (batch.doc_ids == 0)
        for r, i in enumerate(group):
            pos = keep[r].nonzero().squeeze(1)
            per_passage[i] = (acts[r, pos].float().to(torch.float16).cpu(), pos.cpu())
        bar.update(sum(lengths[i] for i in group))
    bar.close()
    n = len(docs)
    acts = torch.cat([per_passage[i][0] for i in range(n)])
    position = torch.cat([per_passage[i][1] for i in range(n)]).long()
    passage = torch.repeat_interleave(torch.arange(n), torch.tensor([per_passage[i][1].numel() for i in range(n)]))
    offsets = torch.zeros(n + 1, dtype=torch.long)
    offsets[1:] = torch.tensor(lengths).cumsum(0)
    ids = torch.tensor([t for d in docs for t in d], dtype=torch.int32)
    meta = {"model_id": lm.model_id, "hook": hook, "outlier_mult": outlier_mult, "max_tokens": max_tokens}
    return PassageTokens(acts, passage, position, ids, offsets, meta)


def cache_key(lm, texts: Sequence[str], hook: str, outlier_mult: float | None, max_tokens: int | None) -> str:
    h = hashlib.sha256()
    precision = [lm.autocast] if getattr(lm, "autocast", "off") != "off" else []  # fp32 keys as before
    h.update(json.dumps([CACHE_VERSION, lm.model_id, getattr(lm, "sha256", None), str(lm.path), hook,
                         outlier_mult, max_tokens, *precision]).encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def texts_hash(texts: Sequence[str]) -> str:
    """sha256 of the texts in order (recorded with labels so a reader knows what was scored)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def save_tokens(pt: PassageTokens, path: Path) -> None:
    tensors = {"acts": pt.acts.contiguous(), "passage": pt.passage, "position": pt.position, "ids": pt.ids,
               "offsets": pt.offsets}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"meta": json.dumps(pt.meta)})


def load_tokens(path: Path) -> PassageTokens:
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
        t = {k: f.get_tensor(k) for k in f.keys()}
    return PassageTokens(t["acts"], t["passage"], t["position"], t["ids"], t["offsets"], meta)


def passage_tokens(lm, texts: Sequence[str], hook: str, outlier_mult: float | None = DEFAULT_OUTLIER_MULT,
                   batch_tokens: int = 4096, max_tokens: int | None = 2048,
                   cache_dir: str | Path | None = None) -> PassageTokens:
    """`run_passages`, read from / written to `cache_dir/passage_acts_<key>.safetensors` when a
    cache directory is given (key: model, hook, outlier rule, truncation and the texts)."""
    texts = list(texts)
    if cache_dir is None:
        return run_passages(lm, texts, hook, outlier_mult, batch_tokens, max_tokens)
    key = cache_key(lm, texts, hook, outlier_mult, max_tokens)
    path = Path(cache_dir) / f"passage_acts_{key[:16]}.safetensors"
    if path.exists():
        try:
            pt = load_tokens(path)
            if pt.meta.get("key") == key:
                log.info("passage activations from %s", path)
                return pt
        except Exception as e:  # a damaged cache file is recomputed, never trusted
            log.warning("ignoring unreadable passage cache %s (%s)", path, e)
    pt = run_passages(lm, texts, hook, outlier_mult, batch_tokens, max_tokens)
    pt.meta["key"] = key
    save_tokens(pt, path)
    return pt


@torch.no_grad()
def reduce_tokens(pt: PassageTokens, sae=None, skip_tokens: int = DEFAULT_SKIP, reduce: str = "max",
                  chunk_tokens: int = 8192) -> torch.Tensor | list[TokenActs]:
    """Per-passage [n, d] (SAE features, or raw residuals when `sae` is None) from cached tokens.

    A passage with no token left after the mask and the skip rule scores 0 (and is logged)."""
    if reduce not in REDUCES:
        raise UserError(f"unknown reduce {reduce!r}; use one of {', '.join(REDUCES)}")
    if skip_tokens < 0:
        raise UserError(f"skip_tokens must be >= 0, not {skip_tokens}")
    device = sae.W_enc.device if sae is not None else torch.device("cpu")
    sel = pt.select(skip_tokens)
    idx = sel.nonzero().squeeze(1)
    passage = pt.passage[idx]
    counts = torch.bincount(passage, minlength=pt.n_passages)
    empty = int((counts == 0).sum())
    if empty:
        log.warning("%d passage(s) have no token left after the mask and skip_tokens=%d; they score 0",
                    empty, skip_tokens)
    d = sae.cfg.d_sae if sae is not None else pt.acts.shape[1]
    if reduce == "none":
        lengths = pt.lengths.tolist()
        outs = [TokenActs(pt.tokens_of(i), torch.zeros(lengths[i], d), torch.zeros(lengths[i], dtype=torch.bool))
                for i in range(pt.n_passages)]
    else:
        out = torch.zeros(pt.n_passages, d)
    bounds = torch.zeros(pt.n_passages + 1, dtype=torch.long)
    bounds[1:] = counts.cumsum(0)
    start = 0  # chunks end on passage boundaries so each passage is reduced in one piece
    while start < pt.n_passages:
        end = int(torch.searchsorted(bounds, bounds[start] + chunk_tokens, right=True)) - 1
        end = max(end, start + 1)
        rows = idx[bounds[start]:bounds[end]]
        if rows.numel():
            x = pt.acts[rows].to(device=device, dtype=torch.float32)
            f = sae.encode(x).float().cpu() if sae is not None else x.cpu()
            lens = counts[start:end]
            nz = lens > 0
            if reduce == "none":
                parts = f.split(lens.tolist())
                for j, part in enumerate(parts):
                    if part.numel():
                        p = pt.position[rows[bounds[start + j] - bounds[start]:bounds[start + j + 1] - bounds[start]]]
                        outs[start + j].acts[p] = part
                        outs[start + j].keep[p] = True
            elif reduce == "last":
                last = lens[nz].cumsum(0) - 1
                out[start:end][nz] = f[last]
            else:
                red = torch.segment_reduce(f, "max" if reduce == "max" else "mean", lengths=lens[nz], axis=0)
                out[start:end][nz] = red
        start = end
    return outs if reduce == "none" else out


def passage_acts(lm, sae, texts: Sequence[str], hook: str | None = None, skip_tokens: int = DEFAULT_SKIP,
                 batch_tokens: int = 4096, reduce: str = "max", outlier_mult: float | None = DEFAULT_OUTLIER_MULT,
                 cache_dir: str | Path | None = None, max_tokens: int | None = 2048
                 ) -> torch.Tensor | list[TokenActs]:
    """Per-passage SAE feature activations [n, d_sae] (raw residuals [n, d_model] when `sae` is
    None) at `hook` (default: the SAE's), after THE position mask and the `skip_tokens` rule,
    reduced by `reduce` ("max" | "mean" | "last"); `reduce="none"` gives one `TokenActs` per text."""
    if hook is None:
        if sae is None:
            raise UserError("passage_acts needs a hook when no SAE is given")
        hook = sae.cfg.hook_name
    if reduce not in REDUCES:
        raise UserError(f"unknown reduce {reduce!r}; use one of {', '.join(REDUCES)}")
    pt = passage_tokens(lm, texts, hook, outlier_mult, batch_tokens, max_tokens, cache_dir)
    return reduce_tokens(pt, sae, skip_tokens, reduce)


# --- the model and mask setting that go with an SAE ------------------------------------------------

def sae_hook(sae, lm) -> str:
    """The SAE's hook as a TransformerLens name (SAELens module-path names are translated)."""
    from sae.hooks import parse_hook

    return parse_hook(sae.cfg.hook_name, lm.model).name


def model_spec_for(sae) -> str:
    """What `load_model` needs for the model an SAE was trained on (from its metadata)."""
    from sae.models import EMBEDDED_ID, EMBEDDED_SPEC

    meta = sae.cfg.metadata or {}
    model_id = meta.get("model_id") or (meta.get("provenance") or {}).get("model_id")
    path = meta.get("model_path") or (meta.get("provenance") or {}).get("path")
    if model_id == EMBEDDED_ID:
        return EMBEDDED_SPEC
    if path and Path(path).is_dir():
        return str(path)
    if meta.get("model_name"):  # SAELens releases name the model here
        return meta["model_name"]
    if model_id:
        return model_id
    raise UserError("the SAE's metadata names no model; pass --model")


def outlier_mult_for(run_dir: str | Path | None, sae=None) -> float | None:
    """The norm-outlier multiple the SAE was trained with (metadata, then config.yaml), else 10."""
    meta = (sae.cfg.metadata or {}) if sae is not None else {}
    if "outlier_mult" in meta:
        return meta["outlier_mult"]
    if run_dir is not None:
        from sae.layout import root_or_path

        cfg = root_or_path(run_dir) / "config.yaml"  # RUN/sae reads RUN/config.yaml, as RUN does
        if cfg.exists():
            import yaml

            try:
                conf = yaml.safe_load(cfg.read_text()) or {}
            except yaml.YAMLError:
                conf = {}
            for section in (conf, conf.get("data") or {}, conf.get("harvest") or {}):
                if isinstance(section, dict) and "outlier_mult" in section:
                    return section["outlier_mult"]
    return DEFAULT_OUTLIER_MULT


def load_model_for(sae, model: str | None = None, device: str | None = None):
    """The LM an SAE reads (`--model` overrides the one its metadata names), computing at the
    precision the SAE's training activations had (`autocast` in their provenance; none: "auto")."""
    from sae.models import load_model

    provenance = (sae.cfg.metadata or {}).get("provenance") or {}
    return load_model(model or model_spec_for(sae), device or default_device(), autocast=provenance.get("autocast", "auto"))


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_run(run_dir: str | Path, model: str | None = None, device: str | None = None, lm=None):
    """(lm, sae, hook, outlier_mult) for a run directory or any SAELens SAE directory."""
    from sae.architectures import load_sae

    torch.set_flush_denormal(True)
    device = device or default_device()
    sae = load_sae(run_dir, device)
    if lm is None:
        lm = load_model_for(sae, model, device)
    hook = sae_hook(sae, lm)
    return lm, sae, hook, outlier_mult_for(run_dir, sae)
