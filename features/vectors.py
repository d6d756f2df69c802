"""Emotion vectors, the paper's recipe, at every layer asked for in one forward pass.

Per layer (resid_post): each passage's residuals are averaged over its kept tokens (THE position
mask and `skip_tokens`, the rule labels and the monitor share); per emotion the passage means of
the train split are averaged (each passage weighs the same), the mean over emotions is subtracted,
the top principal components of neutral train text (token level) explaining `variance` (50%) of
its variance are projected out, and each vector is unit-normalised. Held-out separability is the
macro-AUROC of vector projections on the held-out topics (one emotion vs the rest, neutral
included, near-synonym cluster mates left out of the negatives, as labels score features), so the
best layer is picked by measurement.

With a run: the SAE's hook goes through the passage cache in RUN/labeling/ (labeling.scoring),
so `emosae label` and `emosae vectors --run` share one forward over the corpus; cosine of each
vector with the SAE's decoder rows; the best-aligned features per emotion (with their train and
held-out AUROC, scored like labels) go into RUN/labels.json under "aligned"."""

from __future__ import annotations

import argparse
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from sae.errors import UserError
from sae.io import atomic_path, output_dir, write_json_atomic

log = logging.getLogger("emosae")

VECTORS_FILE, INFO_FILE = "vectors.safetensors", "vectors.json"
NAMED_FILE = "named_vectors.safetensors"
# Short neutral sentences that *name* the emotion: the control for the story vectors (which never
# name it). Eleven frames, so no one frame's wording decides the direction.
NAMED_TEMPLATES = ("I feel {w} today.", "She was {w} all afternoon.", "He looked {w} when he got home.",
                   "They felt so {w} about it.", "Honestly, I am {w} right now.", "We were {w} after the call.",
                   "The word of the day is {w}.", "My friend told me she felt {w}.", "Feeling {w}, he sat down.",
                   "It was that {w} kind of evening.", "You seem {w}.")
DEFAULT_VARIANCE = 0.5
DEFAULT_TOP_ALIGNED = 5


# --- hooks <-> file keys ------------------------------------------------------------------------

def vector_key(hook: str) -> str:
    """File key of the vectors at a hook: `layer_{L}` for resid_post (the contract), else
    `{kind}_{L}` (e.g. `hook_resid_pre_12`) for an SAE hooked elsewhere."""
    m = re.fullmatch(r"blocks\.(\d+)\.(hook_\w+)", hook)
    if not m:
        raise ValueError(f"not a TransformerLens hook name: {hook}")
    return f"layer_{m.group(1)}" if m.group(2) == "hook_resid_post" else f"{m.group(2)}_{m.group(1)}"


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """`all`, `L,L,...`, ranges `a-b` and strided ranges `a-b:s` (inclusive)."""
    spec = spec.strip().lower()
    if spec == "all":
        return list(range(n_layers))
    out: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*(?::\s*(\d+))?)?\s*", part)
        if not m:
            raise UserError(f"cannot parse --layers {spec!r}; write all, 15, 10,15,20, 0-29 or 0-29:3")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        step = int(m.group(3) or 1)
        if step < 1 or b < a:
            raise UserError(f"bad layer range {part.strip()!r}; write a-b:s with a <= b and s >= 1")
        out.extend(range(a, b + 1, step))
    bad = [layer for layer in out if not 0 <= layer < n_layers]
    if bad:
        raise UserError(f"layer(s) {bad} out of range: the model has layers 0..{n_layers - 1}")
    return sorted(set(out))


# --- the recipe ---------------------------------------------------------------------------------

def neutral_pcs(xtx: torch.Tensor, total: torch.Tensor, n: int, variance: float) -> torch.Tensor:
    """Top principal directions [d, k] of neutral tokens explaining >= `variance` of their variance,
    from streamed sums (sum x x^T and sum x, float64)."""
    if n < 2 or variance <= 0:
        return torch.zeros(xtx.shape[0], 0, dtype=torch.float64)
    mean = total / n
    cov = (xtx - n * torch.outer(mean, mean)) / (n - 1)
    evals, evecs = torch.linalg.eigh(cov)
    evals, evecs = evals.flip(0).clamp(min=0), evecs.flip(1)
    frac = evals.cumsum(0) / evals.sum()
    k = int(torch.searchsorted(frac, torch.tensor(variance, dtype=frac.dtype)).item()) + 1
    return evecs[:, :min(k, evecs.shape[1])]


def make_vectors(passage_means: torch.Tensor, rows_emotion: Sequence[str], emotions: Sequence[str],
                 pcs: torch.Tensor) -> torch.Tensor:
    """The recipe on per-passage means: per-emotion mean, minus the mean over emotions, neutral
    PCs projected out, unit norm. `passage_means` rows align with `rows_emotion`."""
    em = np.asarray(rows_emotion)
    means = []
    for e in emotions:
        idx = torch.from_numpy(np.flatnonzero(em == e))
        if idx.numel() == 0:
            raise UserError(f"emotion {e!r} has no train passages with kept tokens; add passages or lower skip_tokens")
        means.append(passage_means[idx].double().mean(0))
    m = torch.stack(means)
    v = m - m.mean(0, keepdim=True)
    if pcs.shape[1]:
        v = v - (v @ pcs) @ pcs.T
    return (v / v.norm(dim=1, keepdim=True).clamp(min=1e-12)).float()


# --- the forward: per-passage means and neutral token sums per hook ------------------------------

@dataclass
class HookSums:
    """What one hook accumulates over the corpus (never all token activations at once)."""

    means: torch.Tensor  # [n_passages, d] mean over kept tokens (0 where none is kept)
    counts: torch.Tensor  # [n_passages] kept tokens
    xtx: torch.Tensor  # [d, d] float64: sum x x^T over neutral train tokens
    total: torch.Tensor  # [d] float64: sum x over neutral train tokens
    n_neutral: int = 0
    norm_sum: float = 0.0
    n_tokens: int = 0

    @classmethod
    def empty(cls, n: int, d: int, device) -> "HookSums":
        return cls(torch.zeros(n, d), torch.zeros(n, dtype=torch.long),
                   torch.zeros(d, d, dtype=torch.float64, device=device), torch.zeros(d, dtype=torch.float64, device=device))

    def add_neutral(self, x: torch.Tensor) -> None:
        x = x.double()
        if x.numel():
            self.xtx += x.T @ x
            self.total += x.sum(0)
            self.n_neutral += x.shape[0]


@torch.no_grad()
def sums_streamed(lm, texts: Sequence[str], neutral: np.ndarray, hooks: Sequence[str], skip_tokens: int,
                  outlier_mult: float | None, batch_tokens: int = 4096, max_tokens: int | None = 2048
                  ) -> dict[str, HookSums]:
    """All `hooks` from one forward per batch (to the deepest hook), reduced as the batch goes.
    The mask at each hook is the one `labeling.scoring.passage_acts` applies there: same padded
    batches, same position mask and outlier rule, same skip rule."""
    from tqdm import tqdm

    from labeling.scoring import _batches, _padded_batch, tokenize
    from sae.data import position_mask
    from sae.harvest import forward_acts, special_ids

    docs = tokenize(lm.tokenizer, texts, max_tokens)
    if any(not x for x in docs):
        raise UserError("a passage is empty after tokenization; remove empty texts")
    device = next(lm.model.parameters()).device
    specials = special_ids(lm.tokenizer)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.tokenizer.eos_token_id
    sums = {h: HookSums.empty(len(docs), lm.model.config.hidden_size, device) for h in hooks}
    neutral_t = torch.as_tensor(neutral, dtype=torch.bool)
    lengths = [len(x) for x in docs]
    bar = tqdm(total=sum(lengths), unit="tok", desc=f"forward to {hooks[-1]}", disable=None)
    for group in _batches(lengths, batch_tokens):
        batch = _padded_batch([docs[i] for i in group], pad).to(device)
        acts = forward_acts(lm.model, batch, list(hooks))
        gidx = torch.tensor(group)
        is_neutral = neutral_t[gidx].to(device)
        for h in hooks:
            a = acts[h].float()
            keep = position_mask(batch.input_ids, batch.positions, specials, a, outlier_mult)
            keep &= (batch.doc_ids == 0) & (batch.positions >= skip_tokens)
            kf = keep.to(a.dtype)
            cnt = kf.sum(1)
            s = sums[h]
            s.means[gidx] = (torch.einsum("btd,bt->bd", a, kf) / cnt.clamp(min=1)[:, None]).cpu()
            s.counts[gidx] = cnt.long().cpu()
            s.norm_sum += float((a.norm(dim=-1) * kf).sum())
            s.n_tokens += int(cnt.sum())
            s.add_neutral(a[keep & is_neutral[:, None]])
        bar.update(sum(lengths[i] for i in group))
    bar.close()
    for s in sums.values():
        s.xtx, s.total = s.xtx.cpu(), s.total.cpu()
    return sums


def sums_cached(lm, texts: Sequence[str], neutral: np.ndarray, hook: str, skip_tokens: int,
                outlier_mult: float | None, batch_tokens: int, cache_dir: str | Path) -> HookSums:
    """One hook through `labeling.scoring.passage_tokens` and its disk cache (RUN/labeling), so
    `emosae label` and `emosae vectors --run` share one forward over the corpus."""
    from labeling.scoring import passage_tokens, reduce_tokens

    pt = passage_tokens(lm, list(texts), hook, outlier_mult, batch_tokens, cache_dir=cache_dir)
    sel = pt.select(skip_tokens)
    counts = torch.bincount(pt.passage[sel], minlength=pt.n_passages)
    s = HookSums.empty(pt.n_passages, pt.acts.shape[1], "cpu")
    s.means = reduce_tokens(pt, None, skip_tokens, "mean")
    s.counts = counts
    x = pt.acts[sel].float()
    s.norm_sum, s.n_tokens = float(x.norm(dim=-1).sum()), int(sel.sum())
    s.add_neutral(pt.acts[sel & torch.as_tensor(neutral, dtype=torch.bool)[pt.passage]].float())
    return s


# --- the result ---------------------------------------------------------------------------------

@dataclass
class VectorResult:
    """Unit emotion vectors per hook, and how well each one separates held-out emotions."""

    emotions: list[str]
    hooks: list[str]
    vectors: dict[str, torch.Tensor]  # hook -> [n_emotions, d_model]
    heldout: dict[str, dict | None]  # hook -> labeling.aurocs summary on the held-out topics
    train: dict[str, dict]  # hook -> the same on the train split (in-sample)
    n_pcs: dict[str, int]
    mean_resid_norm: dict[str, float]
    skip_tokens: int
    outlier_mult: float | None
    variance: float
    corpus: str
    n_train: int
    n_heldout: int
    n_neutral_tokens: int
    model: dict = field(default_factory=dict)
    named: dict[str, torch.Tensor] = field(default_factory=dict)  # hook -> [n_emotions, d] (the control)

    def macro(self, hook: str, split: str = "heldout") -> float | None:
        doc = (self.heldout if split == "heldout" else self.train).get(hook)
        return doc["macro_auroc"] if doc else None

    @property
    def heldout_auroc(self) -> dict[str, float | None]:
        return {h: self.macro(h) for h in self.hooks}

    @property
    def layers(self) -> list[int]:
        return sorted(int(h.split(".")[1]) for h in self.hooks if h.endswith("hook_resid_post"))

    @property
    def best_hook(self) -> str:
        """The resid_post hook with the highest held-out macro-AUROC (train AUROC when nothing is
        held out; the shallower layer wins a tie)."""
        cands = [h for h in self.hooks if h.endswith("hook_resid_post")] or self.hooks
        score = {h: self.macro(h) if self.macro(h) is not None else (self.macro(h, "train") or 0.0) for h in cands}
        return max(cands, key=lambda h: (score[h], -int(h.split(".")[1])))

    @property
    def best_layer(self) -> int:
        return int(self.best_hook.split(".")[1])

    def info(self) -> dict:
        """vectors.json: the documented fields plus what made them."""
        by_layer = {int(h.split(".")[1]): h for h in self.hooks if h.endswith("hook_resid_post")}
        per = lambda f: {str(layer): f(h) for layer, h in sorted(by_layer.items())}  # noqa: E731
        others = [h for h in self.hooks if not h.endswith("hook_resid_post")]
        return {"emotions": self.emotions, "layers": sorted(by_layer), "heldout_auroc": per(self.macro),
                "best_layer": self.best_layer, "skip_tokens": self.skip_tokens,
                "heldout": per(lambda h: self.heldout.get(h)),
                "train_auroc": per(lambda h: self.macro(h, "train")),
                "n_neutral_pcs": per(lambda h: self.n_pcs[h]),
                "mean_resid_norm": per(lambda h: round(self.mean_resid_norm[h], 4)),
                "other_hooks": {vector_key(h): {"hook": h, "heldout_auroc": self.macro(h), "heldout": self.heldout.get(h),
                                                "n_neutral_pcs": self.n_pcs[h]} for h in others},
                "settings": {"hook_kind": "hook_resid_post", "neutral_variance": self.variance,
                             "outlier_mult": self.outlier_mult,
                             "reduce": "mean over kept tokens per passage, then mean over an emotion's train passages",
                             "neutral": "token-level PCA of neutral train passages (kept tokens)",
                             "corpus": self.corpus, "n_train": self.n_train, "n_heldout": self.n_heldout,
                             "n_neutral_tokens": self.n_neutral_tokens},
                "named_vectors": ({"file": NAMED_FILE, "templates": list(NAMED_TEMPLATES),
                                   "reduce": "the same recipe on sentences that name the emotion: mean over "
                                             "kept tokens (no skip), mean over the templates, minus the mean "
                                             "over emotions, the story vectors' neutral PCs projected out, unit norm"}
                                  if self.named else None),
                "model": self.model}

    def save(self, out_dir: str | Path) -> Path:
        """vectors.safetensors (+ emotion order in its metadata) and vectors.json, atomically."""
        from safetensors.torch import save_file


        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {vector_key(h): self.vectors[h].contiguous().float() for h in self.hooks}
        with atomic_path(out / VECTORS_FILE) as tmp:
            save_file(tensors, str(tmp), metadata={"emotions": json.dumps(self.emotions)})
        if self.named:
            named = {vector_key(h): v.contiguous().float() for h, v in self.named.items()}
            with atomic_path(out / NAMED_FILE) as tmp:
                save_file(named, str(tmp), metadata={"emotions": json.dumps(self.emotions),
                                                     "templates": json.dumps(list(NAMED_TEMPLATES))})
        else:  # never leave another computation's control beside these vectors
            (out / NAMED_FILE).unlink(missing_ok=True)
        write_json_atomic(out / INFO_FILE, self.info())
        return out


def compute_vectors(lm, layers: Sequence[int], corpus: str | Path | list[dict] | None = None,
                    skip_tokens: int | None = None, variance: float = DEFAULT_VARIANCE,
                    outlier_mult: float | None = None, batch_tokens: int = 4096,
                    emotions: Sequence[str] | None = None, cached_hooks: Sequence[str] = (),
                    cache_dir: str | Path | None = None, n_boot: int = 1000, seed: int = 0,
                    named: bool = True) -> VectorResult:
    """Emotion vectors at `layers` (resid_post) from one forward over the corpus (default: the
    shipped one; train rows make the vectors, heldout rows score them). `cached_hooks` (e.g. an
    SAE's hook) go through the passage cache in `cache_dir` instead, shared with `emosae label`.
    The best layer's held-out AUROCs get bootstrap CIs (`n_boot` resamples). With `named`, the
    control vectors from sentences that name each emotion come too (`named_vectors`)."""
    from labeling.aurocs import emotion_aurocs
    from labeling.corpus import NEUTRAL, load_corpus
    from labeling.corpus import emotions as corpus_emotions
    from labeling.scoring import DEFAULT_OUTLIER_MULT, DEFAULT_SKIP
    from sae.hooks import n_layers, parse_hook

    skip_tokens = DEFAULT_SKIP if skip_tokens is None else int(skip_tokens)
    outlier_mult = DEFAULT_OUTLIER_MULT if outlier_mult is None else outlier_mult
    if skip_tokens < 0:
        raise UserError(f"skip_tokens must be >= 0, not {skip_tokens}")
    if not 0 <= variance < 1:
        raise UserError(f"neutral variance fraction must be in [0, 1), not {variance}")
    rows = corpus if isinstance(corpus, list) else load_corpus(corpus)
    name = "shipped" if corpus is None else ("rows" if isinstance(corpus, list) else str(corpus))
    emos = list(emotions) if emotions else corpus_emotions(rows)
    if len(emos) < 2:
        raise UserError("emotion vectors need at least two emotions in the corpus")
    train_em = {r["emotion"] for r in rows if r.get("split", "train") == "train"}
    missing = [e for e in emos if e not in train_em]
    if missing:
        raise UserError(f"no train passages for emotion(s) {missing}; the corpus needs train rows for every emotion")
    n_model = n_layers(lm.model)
    bad = [layer for layer in layers if not 0 <= layer < n_model]
    if bad:
        raise UserError(f"layer(s) {bad} out of range: the model has layers 0..{n_model - 1}")
    cached = [parse_hook(h, lm.model).name for h in cached_hooks] if cache_dir is not None else []
    streamed = [f"blocks.{layer}.hook_resid_post" for layer in sorted(set(layers))]
    streamed = [h for h in streamed if h not in cached]
    hooks = sorted(set(streamed) | set(cached), key=lambda h: (int(h.split(".")[1]), h))
    if not hooks:
        raise UserError("no layer to compute vectors at; pass --layers")
    texts = [r["text"] for r in rows]
    row_em = np.array([r["emotion"] for r in rows])
    split = np.array([r.get("split", "train") for r in rows])
    neutral = (row_em == NEUTRAL) & (split == "train")
    if not neutral.any():
        log.warning("vectors: the corpus has no neutral train rows; no neutral directions are projected out")
    log.info("vectors: %d passages (%d emotions), hooks %s", len(rows), len(emos),
             ", ".join(hooks) if len(hooks) <= 4 else f"{hooks[0]} .. {hooks[-1]} ({len(hooks)})")
    sums = sums_streamed(lm, texts, neutral, streamed, skip_tokens, outlier_mult, batch_tokens) if streamed else {}
    for h in cached:
        sums[h] = sums_cached(lm, texts, neutral, h, skip_tokens, outlier_mult, batch_tokens, cache_dir)
    has = sums[hooks[0]].counts.numpy() > 0
    in_set = np.isin(row_em, emos + [NEUTRAL]) & has
    tr = np.flatnonzero(in_set & (split == "train"))
    ho = np.flatnonzero(in_set & (split == "heldout"))
    result = VectorResult(emos, hooks, {}, {}, {}, {}, {}, skip_tokens, outlier_mult, variance, name,
                          len(tr), len(ho), 0, model=dict(lm.provenance))
    tr_em = tr[row_em[tr] != NEUTRAL]
    pcs_at = {h: neutral_pcs(sums[h].xtx, sums[h].total, sums[h].n_neutral, variance) for h in hooks}
    if named:
        result.named = named_vectors(lm, emos, hooks, pcs_at, outlier_mult, batch_tokens)
    for h in hooks:
        s, pcs = sums[h], pcs_at[h]
        vec = make_vectors(s.means[torch.from_numpy(tr_em)], row_em[tr_em], emos, pcs)
        result.vectors[h], result.n_pcs[h] = vec, int(pcs.shape[1])
        result.mean_resid_norm[h] = s.norm_sum / max(s.n_tokens, 1)
        result.n_neutral_tokens = s.n_neutral
        proj = (s.means @ vec.T).numpy()
        result.train[h] = emotion_aurocs({e: proj[tr, j] for j, e in enumerate(emos)}, row_em[tr], n_boot=0)
        result.heldout[h] = (emotion_aurocs({e: proj[ho, j] for j, e in enumerate(emos)}, row_em[ho], n_boot=0)
                             if len(ho) else None)
    if not len(ho):
        log.warning("vectors: no heldout rows; the best layer is chosen on train AUROC (in-sample)")
    elif n_boot:
        best = result.best_hook
        proj = (sums[best].means @ result.vectors[best].T).numpy()
        result.heldout[best] = emotion_aurocs({e: proj[ho, j] for j, e in enumerate(emos)}, row_em[ho],
                                              n_boot=n_boot, seed=seed)
    return result


def named_vectors(lm, emotions: Sequence[str], hooks: Sequence[str], pcs: dict[str, torch.Tensor],
                  outlier_mult: float | None, batch_tokens: int = 4096) -> dict[str, torch.Tensor]:
    """The control for the story vectors: the same recipe on short sentences that *name* each
    emotion (NAMED_TEMPLATES), with the story vectors' neutral PCs projected out. It separates
    "the model has no valence axis" from "valence is not the stories' largest direction": on the
    embedded model, PC1 of these follows valence (r 0.92 at layer 15) while PC1 of the story
    vectors does not (r 0.16; README, "Read it honestly"). Every kept token counts (no
    `skip_tokens`: the sentences are a few tokens long and the word sits near the start)."""
    texts = [t.format(w=e) for e in emotions for t in NAMED_TEMPLATES]
    words = [e for e in emotions for _ in NAMED_TEMPLATES]
    sums = sums_streamed(lm, texts, np.zeros(len(texts), dtype=bool), list(hooks), 0, outlier_mult, batch_tokens)
    return {h: make_vectors(sums[h].means, words, emotions, pcs[h]) for h in hooks}


def load_named(path: str | Path, key: str, emotions: Sequence[str]) -> torch.Tensor | None:
    """The named-emotion control vectors at file key `key` from a vectors dir or run, or None
    (absent, or made for another emotion list: then with a warning)."""
    from safetensors import safe_open

    p = Path(path).expanduser()
    f_path = (p / "vectors" if (p / "vectors" / NAMED_FILE).exists() else p) / NAMED_FILE
    if not f_path.exists():
        return None
    with safe_open(str(f_path), "pt") as f:
        if key not in f.keys():
            return None
        if json.loads((f.metadata() or {}).get("emotions", "null")) != list(emotions):
            log.warning("%s lists other emotions than the vectors beside it; ignored (recompute with `emosae vectors`)", f_path)
            return None
        return f.get_tensor(key).float()


# --- files --------------------------------------------------------------------------------------

def load_vector_set(path: str | Path) -> tuple[list[str], dict[str, torch.Tensor], dict]:
    """(emotions, {file key: [n, d] tensor}, vectors.json or {}) from a vectors dir or a run."""
    from safetensors import SafetensorError, safe_open

    p = Path(path).expanduser()
    d = p / "vectors" if (p / "vectors" / VECTORS_FILE).exists() else p
    f_path = d / VECTORS_FILE
    if not f_path.exists():
        raise UserError(f"no {VECTORS_FILE} in {p}; run `emosae vectors --run RUN` (or --out DIR) first")
    try:
        with safe_open(str(f_path), "pt") as f:
            emotions = json.loads((f.metadata() or {}).get("emotions", "null"))
            tensors = {k: f.get_tensor(k).float() for k in f.keys()}
    except (OSError, ValueError, json.JSONDecodeError, SafetensorError) as e:
        raise UserError(f"could not read {f_path}: {e}; recompute it with `emosae vectors`") from None
    info = {}
    if (d / INFO_FILE).exists():
        from sae.io import read_json

        info = read_json(d / INFO_FILE)
    emotions = emotions or info.get("emotions")
    if not emotions or any(t.shape[0] != len(emotions) for t in tensors.values()):
        raise UserError(f"{f_path} has no emotion list matching its vectors; recompute it with `emosae vectors`")
    return list(emotions), tensors, info


def load_vectors(path: str | Path) -> tuple[list[str], dict[int, torch.Tensor]]:
    """(emotions, {layer: [n_emotions, d_model]}) for the resid_post vectors in a dir or run."""
    emotions, tensors, _ = load_vector_set(path)
    return emotions, {int(k.split("_")[1]): v for k, v in tensors.items() if re.fullmatch(r"layer_\d+", k)}


def vectors_for_hook(path: str | Path, hook: str) -> tuple[list[str], torch.Tensor, dict]:
    """The vectors at exactly `hook` (TransformerLens name), with vectors.json."""
    emotions, tensors, info = load_vector_set(path)
    key = vector_key(hook)
    if key not in tensors:
        raise UserError(f"no emotion vectors at {hook} in {path} (have {sorted(tensors)}); "
                        f"run `emosae vectors --run RUN` to compute them at the SAE's hook")
    return emotions, tensors[key], info


# --- alignment with an SAE ----------------------------------------------------------------------

def aligned_features(vectors: torch.Tensor, W_dec: torch.Tensor, top: int = DEFAULT_TOP_ALIGNED
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos [n_emotions, top], feature ids [n_emotions, top]): decoder rows (unit-normalised)
    most aligned with each unit emotion vector."""
    dec = W_dec.float()
    dec = dec / dec.norm(dim=1, keepdim=True).clamp(min=1e-12)
    v = vectors.float() / vectors.float().norm(dim=1, keepdim=True).clamp(min=1e-12)
    cos = v @ dec.T
    return cos.topk(min(top, cos.shape[1]), dim=1)


def alignment_report(result: VectorResult, sae, hook: str, run_dir: str | Path, lm,
                     corpus: str | Path | None = None, top: int = DEFAULT_TOP_ALIGNED,
                     n_boot: int = 1000, seed: int = 0) -> dict:
    """{emotion: [{"feature", "cos", "auroc", "heldout_auroc"}]} for the decoder rows best aligned
    with each vector, scored exactly as labels score features (`labeling.label.score_rows`: max
    over kept tokens, the run's cached forward), plus a held-out summary (with bootstrap CIs) of
    the best-aligned feature per emotion."""
    from labeling.aurocs import auroc, emotion_aurocs, split_masks
    from labeling.label import LabelSettings, corpus_rows, labels_path, score_rows
    from labeling.scoring import DEFAULT_SKIP

    vals, ids = aligned_features(result.vectors[hook], sae.W_dec.detach().cpu(), top)
    st = {"reduce": LabelSettings.reduce}  # no labels yet: score as `emosae label` will (its default rule)
    if labels_path(run_dir).exists():
        from labeling.label import read_labels

        st = read_labels(run_dir).get("settings") or st  # a labels.json holding only alignments: still none
    settings = LabelSettings(skip_tokens=int(st.get("skip_tokens", DEFAULT_SKIP)), reduce=st.get("reduce", "max"))
    rows = corpus_rows(corpus)
    scores, _ = score_rows(run_dir, rows, settings, lm)
    em = np.array([r["emotion"] for r in rows])
    split = np.array([r.get("split", "train") for r in rows])
    parts = {name: np.flatnonzero(split == name) for name in ("train", "heldout")}

    def score(idx: np.ndarray, e: str, feats: list[int]) -> list[float | None]:
        pos, neg, _ = split_masks(em[idx], e)
        if not pos.any() or not neg.any():
            return [None] * len(feats)
        a = auroc(scores[idx][pos][:, feats], scores[idx][neg][:, feats])
        return [None if np.isnan(x) else round(float(x), 4) for x in a]

    aligned: dict[str, list[dict]] = {}
    for j, e in enumerate(result.emotions):
        feats = ids[j].tolist()
        a_tr, a_ho = score(parts["train"], e, feats), score(parts["heldout"], e, feats)
        aligned[e] = [{"feature": int(f), "cos": round(float(c), 4), "auroc": a, "heldout_auroc": b}
                      for f, c, a, b in zip(feats, vals[j].tolist(), a_tr, a_ho)]
    best = {e: v[0]["feature"] for e, v in aligned.items() if v}
    ho = parts["heldout"]
    summary = {"hook": hook, "top": top, "skip_tokens": settings.skip_tokens, "reduce": settings.reduce,
               "cos_mean_best": round(float(vals[:, 0].mean()), 4)}
    if len(ho):
        held = emotion_aurocs({e: scores[ho, f] for e, f in best.items()}, em[ho], n_boot, seed)
        for e, f in best.items():
            if e in held["per_emotion"]:
                held["per_emotion"][e]["feature"] = int(f)
        summary["heldout"] = held
    return {"aligned": aligned, "summary": summary}


def merge_into_labels(run_dir: str | Path, aligned: dict, summary: dict) -> Path:
    """Read-modify-write RUN/labels.json: set "aligned" (and "aligned_summary"), keep the rest."""
    from labeling.label import labels_path
    from sae.layout import FINGERPRINT_KEY, find_sae_dir, sae_fingerprint

    path = labels_path(run_dir)
    labels = {FINGERPRINT_KEY: sae_fingerprint(find_sae_dir(run_dir))}  # a new file: the alignments' SAE
    if path.exists():
        try:
            labels = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{path} is not valid JSON; re-run `emosae label {run_dir}` before adding alignments") from None
        if not isinstance(labels, dict):
            raise UserError(f"{path} is not a JSON object; re-run `emosae label {run_dir}` before adding alignments")
    labels["aligned"] = aligned
    labels["aligned_summary"] = summary
    write_json_atomic(path, labels)
    return path


# --- CLI ----------------------------------------------------------------------------------------

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vectors", help="emotion vectors (the paper's recipe) per layer, with held-out separability")
    p.add_argument("--model", default=None, help="model spec (default: the run's model, else the embedded one)")
    p.add_argument("--layers", default=None, help="all | L,L | a-b | a-b:s (default: the run's layer, else all)")
    p.add_argument("--run", default=None, help="a run (or SAE dir): vectors also at its hook, decoder alignment into labels.json")
    p.add_argument("--out", default=None, help="output dir (default RUN/vectors; required without --run)")
    p.add_argument("--corpus", default=None, help="JSONL with text, emotion (neutral allowed), split (default: the shipped corpus)")
    p.add_argument("--skip-tokens", type=int, default=None, help="drop each passage's first N tokens (default: labeling.scoring.DEFAULT_SKIP)")
    p.add_argument("--variance", type=float, default=DEFAULT_VARIANCE, help="neutral variance fraction projected out (0.5)")
    p.add_argument("--top", type=int, default=DEFAULT_TOP_ALIGNED, help="aligned features kept per emotion")
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print vectors.json (+ alignment summary) on stdout")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    from labeling.label import check_labels_fit, labels_path, read_labels
    from labeling.scoring import default_device, load_run
    from sae.cli import print_json
    from sae.hooks import n_layers
    from sae.layout import run_root
    from sae.models import EMBEDDED_SPEC, load_model

    torch.set_flush_denormal(True)
    output_dir(args.out)
    if args.top < 1:
        raise UserError(f"--top must be >= 1 (aligned features kept per emotion), not {args.top}")
    sae = hook = root = None
    outlier_mult = None
    if args.run:
        root = run_root(args.run)
        if labels_path(root).exists():  # before minutes of work: the alignments go into it
            check_labels_fit(read_labels(root), root)
        lm, sae, hook, outlier_mult = load_run(args.run, model=args.model, device=args.device)
        out = Path(args.out) if args.out else root / "vectors"
    else:
        if not args.out:
            raise UserError("give --out DIR for the vectors (or --run RUN to write RUN/vectors)")
        lm = load_model(args.model or EMBEDDED_SPEC, args.device or default_device())
        out = Path(args.out)
    if args.layers is None:
        layers = [] if sae is not None else list(range(n_layers(lm.model)))
    else:
        layers = parse_layers(args.layers, n_layers(lm.model))
    result = compute_vectors(lm, layers, args.corpus, args.skip_tokens, args.variance, outlier_mult,
                             args.batch_tokens, cached_hooks=[hook] if hook else (),
                             cache_dir=root / "labeling" if root else None)
    result.save(out)
    doc = {"out": str(out), **result.info()}
    if sae is not None:
        report = alignment_report(result, sae, hook, root, lm, args.corpus, args.top)
        labels = merge_into_labels(root, report["aligned"], report["summary"])
        doc["aligned_summary"] = report["summary"]
        doc["labels"] = str(labels)
    _log_summary(result, doc.get("aligned_summary"))
    if args.json:
        print_json(doc)
    else:
        _print_table(result, doc)
    return 0


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _n_good(summary: dict | None) -> str:
    return "n/a" if not summary else f"{summary['n_at_threshold']}/{summary['n_emotions']}"


def _log_summary(result: VectorResult, aligned: dict | None) -> None:
    best = result.best_hook
    log.info("vectors: best layer %d (held-out macro-AUROC %s); %s emotions with held-out AUROC >= 0.9",
             result.best_layer, _fmt(result.macro(best)), _n_good(result.heldout.get(best)))
    if aligned and aligned.get("heldout"):
        h = aligned["heldout"]
        log.info("vectors: best-aligned SAE feature per emotion: held-out macro-AUROC %s, %s >= 0.9",
                 _fmt(h["macro_auroc"]), _n_good(h))


def _print_table(result: VectorResult, doc: dict) -> None:
    print(f"emotion vectors -> {doc['out']}  (skip_tokens={result.skip_tokens}, "
          f"neutral variance {result.variance:g}, {result.n_train} train / {result.n_heldout} held-out passages)")
    print(f"{'hook':30s} {'heldout':>8s} {'>=0.9':>6s} {'train':>7s} {'PCs':>4s} {'|resid|':>8s}")
    for h in result.hooks:
        print(f"{h:30s} {_fmt(result.macro(h)):>8s} {_n_good(result.heldout.get(h)):>6s} "
              f"{_fmt(result.macro(h, 'train')):>7s} {result.n_pcs[h]:4d} {result.mean_resid_norm[h]:8.1f}")
    print(f"best layer: {result.best_layer}")
    if doc.get("aligned_summary", {}).get("heldout"):
        s = doc["aligned_summary"]
        print(f"best-aligned features at {s['hook']}: held-out macro-AUROC {_fmt(s['heldout']['macro_auroc'])}, "
              f"{_n_good(s['heldout'])} >= 0.9 (written to {doc['labels']})")
