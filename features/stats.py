"""`emosae stats RUN`: per-feature statistics in one streaming pass, memory bounded by d_sae.

Sources: an activation cache (`--cache`, no model forward), any text source (`--dataset`), or by
default the shipped emotion corpus, read through the passage cache that `emosae label` shares.

Per feature, all updated chunk by chunk (a chunk = whole rows, so a context window never needs a
later chunk):
- `max_act`, `density` (fraction of unmasked tokens with act > 0);
- top-K activations with their +-W token window (token ids and this feature's per-token values,
  bounded by the row and the document) recorded when they enter the top-K;
- quantile samples. Method: a uniform random sample of Q*S of the feature's non-zero occurrences
  is kept by priority sampling (each occurrence draws a seeded uniform priority; the Q*S
  highest are kept, which is a uniform sample without replacement). At the end the sample is sorted by activation and cut into Q
  equal-count bins of S, so bin q holds S occurrences drawn uniformly from between the feature's
  q/Q and (q+1)/Q activation quantiles as the sample estimates them (fewer when the feature fired
  fewer than Q*S times);
- a histogram of non-zero acts: 512 fine linear bins over [0, 2^e], e growing (bins merged
  pairwise) as larger values arrive, re-binned at the end into 32 linear bins over [0, max_act]
  by splitting each fine bin in proportion to its overlap (each fine bin is <= 1/8 of an output
  bin, so the split moves at most that share of one fine bin's count across an edge).
After the pass: top positive/negative logit effects of each decoder row through the final norm
and the unembedding, and nearest features by decoder cosine. Output: RUN/features/ as
docs/formats.md says."""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import save_file

from sae.errors import UserError
from sae.io import atomic_path, output_dir, write_json_atomic
from sae.layout import FINGERPRINT_KEY, find_sae_dir, run_root, sae_fingerprint

log = logging.getLogger("emosae")

QUANTILE_METHOD = ("priority sample (seeded uniform priorities, the Q*S highest kept = a uniform sample without "
                   "replacement) of each feature's non-zero occurrences, "
                   "sorted by activation and cut into Q equal-count bins of S")
HIST_METHOD = ("512 fine linear bins over [0, 2^e] merged pairwise as e grows, re-binned into 32 linear bins "
               "over [0, max_act] in proportion to overlap")


@dataclass
class StatsConfig:
    k: int = 16  # top examples per feature
    window: int = 12  # tokens each side (T = 2W+1)
    quantile_bins: int = 8
    samples_per_bin: int = 4
    hist_bins: int = 32
    fine_bins: int = 512
    n_logits: int = 10
    n_neighbors: int = 10
    chunk_tokens: int | None = None  # kept tokens per encode; default keeps [chunk, d_sae] ~128 MB
    seed: int = 0

    def chunk_for(self, d_sae: int) -> int:
        return self.chunk_tokens or max(256, (1 << 25) // d_sae)


@dataclass
class Chunk:
    """Whole rows of tokens and the activations of their kept tokens.

    `rows` [r, L] token ids (-1 = padding), `docs` [r, L] document ids, `local` [n] each kept
    token's flat position in `rows`, `row_offset` the global row of rows[0] (so the global flat
    index of a token is (row_offset + row) * L + t)."""

    acts: torch.Tensor
    local: torch.Tensor
    rows: torch.Tensor
    docs: torch.Tensor
    row_offset: int

    @property
    def L(self) -> int:
        return self.rows.shape[1]


def _per_feature_best(c: torch.Tensor, v: torch.Tensor, m: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For entries (feature c, priority v > 0): the features present, and each one's m best as
    [n_features, m] priorities (-inf = none) and entry numbers (-1 = none), best first.

    One stable sort on an int64 key (feature, then the float32 bit pattern of v, which orders
    positive floats like their values)."""
    bits = v.float().contiguous().view(torch.int32).long()
    key = c * (1 << 31) + ((1 << 31) - 1 - bits)
    order = torch.argsort(key, stable=True)
    cs = c[order]
    feats, counts = torch.unique_consecutive(cs, return_counts=True)
    starts = counts.cumsum(0) - counts
    grp = torch.repeat_interleave(torch.arange(len(feats), device=c.device), counts)
    rank = torch.arange(order.numel(), device=c.device) - starts[grp]
    keep = rank < m
    score = torch.full((len(feats), m), -math.inf, device=c.device)
    ent = torch.full((len(feats), m), -1, dtype=torch.long, device=c.device)
    score[grp[keep], rank[keep]] = v[order[keep]].float()
    ent[grp[keep], rank[keep]] = order[keep]
    return feats, score, ent


EMPTY, PAD = -1.0, -2.0  # priorities are > 0: an empty slot loses to any entry, padding to any slot


class Keeper:
    """For every feature, the M entries with the highest priority seen so far (unsorted slots;
    a new entry takes the slot of one it pushes out, so only new entries are written), each with
    its activation, global index, document id and token window."""

    def __init__(self, d: int, m: int, T: int, device: torch.device):
        self.m, self.T = m, T
        self.score = torch.full((d, m), EMPTY, device=device)
        self.act = torch.zeros(d, m, device=device)
        self.index = torch.full((d, m), -1, dtype=torch.long, device=device)
        self.doc = torch.full((d, m), -1, dtype=torch.long, device=device)
        self.tokens = torch.full((d, m, T), -1, dtype=torch.int32, device=device)
        self.token_acts = torch.zeros(d, m, T, device=device)

    @property
    def bar(self) -> torch.Tensor:
        """[d] the priority a new entry must beat (EMPTY while a feature has a free slot)."""
        return self.score.min(1).values

    def offer(self, c: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, win) -> None:
        """Entries (feature `c`, priority `v` > 0, row of f `rows`) that beat `bar`: each
        feature's best replace its lowest slots; `win(feat, row)` gives their windows."""
        if c.numel() == 0:
            return
        m = self.m
        feats, cand, ent = _per_feature_best(c, v, m)
        cand = torch.where(torch.isfinite(cand), cand, torch.full_like(cand, PAD))
        merged = torch.cat([self.score[feats], cand], dim=1)
        sel = merged.topk(m, dim=1).indices
        won = torch.zeros_like(merged, dtype=torch.bool).scatter_(1, sel, True)
        fresh = won[:, m:]  # candidates that got in (all real: PAD never beats a slot)
        out = ~won[:, :m]  # slots they push out; as many per feature as fresh candidates
        gi, cj = fresh.nonzero(as_tuple=True)  # row-major: the k-th fresh of a feature ...
        go, sk = out.nonzero(as_tuple=True)  # ... takes the k-th freed slot of that feature
        if gi.numel() == 0:
            return
        fi = feats[gi]
        act, index, doc, tokens, token_acts = win(fi, rows[ent[gi, cj]])
        self.score[fi, sk] = cand[gi, cj]
        self.act[fi, sk] = act
        self.index[fi, sk] = index
        self.doc[fi, sk] = doc
        self.tokens[fi, sk] = tokens
        self.token_acts[fi, sk] = token_acts

    def sorted_by(self, key: torch.Tensor, descending: bool = True) -> dict[str, torch.Tensor]:
        """The tables with each feature's slots ordered by `key` [d, m] (empty slots last)."""
        present = self.index >= 0
        fill = -math.inf if descending else math.inf
        order = torch.where(present, key, torch.full_like(key, fill)).argsort(dim=1, descending=descending,
                                                                              stable=True)
        out = {name: getattr(self, name).gather(1, order) for name in ("act", "index", "doc")}
        for name in ("tokens", "token_acts"):
            out[name] = getattr(self, name).gather(1, order[..., None].expand(-1, -1, self.T))
        return out


class FeatureStats:
    """Streaming accumulator: feed it `(f, chunk)` with f [n, d_sae] the chunk's feature acts."""

    def __init__(self, d_sae: int, cfg: StatsConfig = StatsConfig(), device: str | torch.device = "cpu"):
        self.d, self.cfg = d_sae, cfg
        self.device = torch.device(device)
        T = 2 * cfg.window + 1
        self.offsets = torch.arange(-cfg.window, cfg.window + 1, device=self.device)
        self.top = Keeper(d_sae, cfg.k, T, self.device)
        self.sample = Keeper(d_sae, cfg.quantile_bins * cfg.samples_per_bin, T, self.device)
        self.nnz = torch.zeros(d_sae, dtype=torch.long, device=self.device)
        self.fine = torch.zeros(d_sae, cfg.fine_bins, dtype=torch.int32, device=self.device)
        self.exp = torch.full((d_sae,), -10_000, dtype=torch.long, device=self.device)  # scale 2^exp
        self.n_tokens = 0
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.L: int | None = None

    @torch.no_grad()
    def update(self, f: torch.Tensor, chunk: Chunk) -> None:
        """Work on the non-zero entries only (an SAE code is sparse); of those, only the ones
        that beat a feature's current M-th best are sorted and merged into its table."""
        f = f.to(self.device, torch.float32)
        n, d = f.shape
        if n == 0:
            return
        if self.L is None:
            self.L = chunk.L
        self.n_tokens += n
        r, c = (f > 0).nonzero(as_tuple=True)
        if r.numel() == 0:
            return
        v = f[r, c]
        self.nnz += torch.bincount(c, minlength=d)
        win = self._windows(f, chunk)
        # only entries that beat a feature's current bar can enter its table
        hit = v > self.top.bar[c]
        self.top.offer(c[hit], v[hit], r[hit], win)
        prio = 1.0 - torch.rand(v.numel(), generator=self.gen, device=self.device)  # priority sample
        hit = prio > self.sample.bar[c]
        self.sample.offer(c[hit], prio[hit], r[hit], win)
        self._hist(c, v)

    def _hist(self, c: torch.Tensor, v: torch.Tensor) -> None:
        H = self.cfg.fine_bins
        cmax = torch.zeros(self.d, device=self.device).scatter_reduce_(0, c, v, "amax")
        seen = cmax > 0
        need = torch.where(seen, torch.ceil(torch.log2(cmax.clamp_min(1e-30))).long(), self.exp)
        new_exp = torch.maximum(self.exp, need)
        grow = (new_exp > self.exp) & (self.exp > -10_000)
        if grow.any():
            feats = grow.nonzero().squeeze(1)
            shift = (new_exp[feats] - self.exp[feats]).clamp(max=40)
            target = torch.arange(H, device=self.device)[None] >> shift[:, None]
            merged = torch.zeros(len(feats), H, dtype=self.fine.dtype, device=self.device)
            merged.scatter_add_(1, target, self.fine[feats])
            self.fine[feats] = merged
        self.exp = new_exp
        width = torch.exp2(self.exp[c].double()) / H
        b = torch.floor(v.double() / width).long().clamp(0, H - 1)
        flat = self.fine.view(-1)
        flat.index_add_(0, c * H + b, torch.ones_like(b, dtype=flat.dtype))

    def _windows(self, f: torch.Tensor, chunk: Chunk):
        """Closure giving (act, global index, doc, window tokens, window acts) for (feature, kept row)."""
        L = chunk.L
        rows = chunk.rows.to(self.device).reshape(-1)
        docs = chunk.docs.to(self.device).reshape(-1)
        local = chunk.local.to(self.device)
        kmap = torch.full((rows.numel(),), -1, dtype=torch.long, device=self.device)
        kmap[local] = torch.arange(local.numel(), device=self.device)
        offsets = self.offsets
        base = chunk.row_offset * L

        def win(feat: torch.Tensor, pos: torch.Tensor):
            p = local[pos]  # flat position in the chunk
            q = p[:, None] + offsets[None]
            inside = (q >= 0) & (q < rows.numel())
            qc = q.clamp(0, rows.numel() - 1)
            ok = inside & (qc // L == (p // L)[:, None]) & (docs[qc] == docs[p][:, None]) & (rows[qc] >= 0)
            tokens = torch.where(ok, rows[qc], torch.full_like(rows[qc], -1)).to(torch.int32)
            k = kmap[qc]
            has = ok & (k >= 0)
            acts = torch.where(has, f[k.clamp(min=0), feat[:, None].expand_as(k)], torch.zeros((), device=f.device))
            return f[pos, feat], base + p, docs[p], tokens, acts

        return win

    @torch.no_grad()
    def finalize(self) -> dict[str, torch.Tensor]:
        n = max(self.n_tokens, 1)
        top = self.top.sorted_by(self.top.act)
        max_act = top["act"][:, 0].clamp_min(0)
        out = {
            "max_act": max_act.float(),
            "density": (self.nnz.double() / n).float(),
            "top_acts": torch.where(top["index"] >= 0, top["act"], torch.zeros_like(top["act"])),
            "top_index": top["index"], "top_doc": top["doc"], "top_tokens": top["tokens"],
            "top_token_acts": top["token_acts"],
        }
        out["hist_counts"], out["hist_edges"] = self._rebin(max_act)
        out.update(self._quantiles())
        return {k: v.cpu().contiguous() for k, v in out.items()}

    def _rebin(self, max_act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        H, B = self.cfg.fine_bins, self.cfg.hist_bins
        d = self.d
        edges = torch.linspace(0, 1, B + 1, device=self.device)[None] * max_act[:, None]
        counts = torch.zeros(d, B, dtype=torch.float64, device=self.device)
        live = max_act > 0
        if live.any():
            feats = live.nonzero().squeeze(1)
            w = torch.exp2(self.exp[feats].double()) / H  # fine bin width
            ow = max_act[feats].double() / B  # output bin width
            lo = torch.arange(H, device=self.device, dtype=torch.float64)[None] * w[:, None]
            hi = lo + w[:, None]
            ob = torch.floor(lo / ow[:, None]).clamp(0, B - 1)
            split = ((ob + 1) * ow[:, None]).clamp(max=hi)  # end of the first output bin touched
            frac_first = ((split - lo) / w[:, None]).clamp(0, 1)
            frac_first = torch.where(ob >= B - 1, torch.ones_like(frac_first), frac_first)
            cnt = self.fine[feats].double()
            sub = torch.zeros(len(feats), B + 1, dtype=torch.float64, device=self.device)
            sub.scatter_add_(1, ob.long(), cnt * frac_first)
            sub.scatter_add_(1, (ob.long() + 1).clamp(max=B), cnt * (1 - frac_first))
            sub[:, B - 1] += sub[:, B]
            counts[feats] = sub[:, :B]
        return counts.round().to(torch.int32), edges.float()

    def _quantiles(self) -> dict[str, torch.Tensor]:
        """Sort each feature's sample by activation and lay it out as Q bins of S slots."""
        Q, S = self.cfg.quantile_bins, self.cfg.samples_per_bin
        s = self.sample.sorted_by(self.sample.act, descending=False)  # present ones first, ascending
        R = self.sample.m
        n_f = (s["index"] >= 0).sum(1)  # [d]
        rank = torch.arange(R, device=self.device)[None].expand(self.d, R)
        n_safe = n_f.clamp_min(1)[:, None]
        bin_of = (rank * Q) // n_safe
        first_of_bin = (bin_of * n_safe + Q - 1) // Q  # smallest rank r with r*Q//n >= bin
        slot = bin_of * S + (rank - first_of_bin)
        valid = (rank < n_f[:, None]) & (rank - first_of_bin < S)
        dst = torch.where(valid, slot, torch.full_like(slot, R))  # R = a discard column
        out = {}
        for name, key, fill in (("quantile_acts", "act", 0.0), ("quantile_index", "index", -1),
                                ("quantile_doc", "doc", -1)):
            res = torch.full((self.d, R + 1), fill, dtype=s[key].dtype, device=self.device)
            res.scatter_(1, dst, s[key])
            out[name] = res[:, :R]
        for name, key, fill in (("quantile_tokens", "tokens", -1), ("quantile_token_acts", "token_acts", 0.0)):
            T = s[key].shape[2]
            res = torch.full((self.d, R + 1, T), fill, dtype=s[key].dtype, device=self.device)
            res.scatter_(1, dst[..., None].expand(-1, -1, T), s[key])
            out[name] = res[:, :R]
        return out


# --- decoder-side statistics ------------------------------------------------------------------------

@torch.no_grad()
def logit_effects(sae, model, n: int = 10, chunk: int = 256) -> dict[str, torch.Tensor]:
    """Top +/- logits of each decoder row pushed through the final norm and the unembedding
    (the norm's bias removed by subtracting norm(0), so only the direction counts)."""
    from sae.hooks import final_norm

    norm = final_norm(model)
    W_U = model.get_output_embeddings().weight  # [vocab, d_model]
    dev = W_U.device
    zero = norm(torch.zeros(1, 1, sae.cfg.d_in, device=dev, dtype=W_U.dtype))[0, 0]
    outs = {k: [] for k in ("logit_pos_ids", "logit_pos_vals", "logit_neg_ids", "logit_neg_vals")}
    for s in range(0, sae.cfg.d_sae, chunk):
        rows = sae.W_dec[s:s + chunk].to(dev, W_U.dtype)
        y = norm(rows[None])[0] - zero
        logits = (y @ W_U.T).float()
        pv, pi = logits.topk(n, dim=1)
        nv, ni = (-logits).topk(n, dim=1)
        outs["logit_pos_ids"].append(pi.int().cpu())
        outs["logit_pos_vals"].append(pv.cpu())
        outs["logit_neg_ids"].append(ni.int().cpu())
        outs["logit_neg_vals"].append((-nv).cpu())
    return {k: torch.cat(v) for k, v in outs.items()}


@torch.no_grad()
def decoder_neighbors(W_dec: torch.Tensor, n: int = 10, chunk: int = 1024) -> dict[str, torch.Tensor]:
    """The n features whose decoder rows have the highest cosine with each row (itself excluded)."""
    W = W_dec.float()
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    d = W.shape[0]
    n = min(n, d - 1)
    ids, cos = [], []
    for s in range(0, d, chunk):
        c = W[s:s + chunk] @ W.T
        c[torch.arange(c.shape[0]), torch.arange(s, s + c.shape[0])] = -math.inf
        v, i = c.topk(n, dim=1)
        ids.append(i.cpu())
        cos.append(v.cpu())
    return {"neighbor_ids": torch.cat(ids), "neighbor_cos": torch.cat(cos)}


def vocab_strings(tokenizer, size: int) -> list[str]:
    """Display string of every token id (ids past the tokenizer's vocabulary give "")."""
    n = min(size, len(tokenizer))
    strings = tokenizer.batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False)
    return strings + [""] * (size - n)


# --- sources ----------------------------------------------------------------------------------------

def chunks_from_cache(cache_dir: str | Path, hook: str, chunk_tokens: int, max_tokens: int | None = None
                      ) -> Iterator[Chunk]:
    """Rows of an activation cache, regrouped so each chunk holds at most ~chunk_tokens kept tokens."""
    from sae.cache import ActivationCache

    cache = ActivationCache.open(cache_dir)
    if hook not in cache.hooks:
        raise UserError(f"cache {cache_dir} holds {', '.join(cache.hooks)}, not the SAE's hook {hook}; "
                        "harvest that hook or pass --dataset")
    L = cache.manifest["context_size"]
    seen = 0
    for i, shard in enumerate(cache.manifest["shards"]):
        data = cache.shard(i)
        acts, index, rows = data[f"acts.{hook}"], data["index"], data["rows"].long()
        row0 = shard["row_offset"]
        docs = data.get("doc_ids")
        if docs is None:  # older caches: a row counts as one document
            docs = torch.arange(row0, row0 + rows.shape[0])[:, None].expand_as(rows).clone()
        row_of = index // L - row0
        per_row = torch.bincount(row_of, minlength=rows.shape[0])
        rows_per_chunk = max(1, chunk_tokens // max(1, int(per_row.float().mean().ceil())))
        bounds = torch.zeros(rows.shape[0] + 1, dtype=torch.long)
        bounds[1:] = per_row.cumsum(0)
        for r0 in range(0, rows.shape[0], rows_per_chunk):
            r1 = min(r0 + rows_per_chunk, rows.shape[0])
            sl = slice(int(bounds[r0]), int(bounds[r1]))
            if max_tokens is not None and seen >= max_tokens:
                return
            a, idx = acts[sl], index[sl]
            if max_tokens is not None and seen + a.shape[0] > max_tokens:
                cut = max_tokens - seen
                a, idx = a[:cut], idx[:cut]
            seen += a.shape[0]
            yield Chunk(a.float(), idx - (row0 + r0) * L, rows[r0:r1], docs[r0:r1], row0 + r0)


def chunks_from_batches(lm, hook: str, batches, outlier_mult: float | None) -> Iterator[Chunk]:
    """Harvest a text source (packed rows, document ids kept) chunk by chunk."""
    from sae.harvest import harvest

    row0 = 0
    for ch in harvest(lm.model, lm.tokenizer, batches, [hook], outlier_mult):
        rows = ch.batch.input_ids
        yield Chunk(ch.acts[hook], ch.index, rows.long(), ch.batch.doc_ids.long(), row0)
        row0 += rows.shape[0]


def chunks_from_passages(pt, chunk_tokens: int, max_tokens: int | None = None) -> Iterator[Chunk]:
    """The passage cache (labeling.scoring.PassageTokens): one passage per row, doc id = passage."""
    L = int(pt.lengths.max())
    n = pt.n_passages
    counts = torch.bincount(pt.passage, minlength=n)
    bounds = torch.zeros(n + 1, dtype=torch.long)
    bounds[1:] = counts.cumsum(0)
    per = max(1, chunk_tokens // max(1, int(counts.float().mean().ceil())))
    seen = 0
    for p0 in range(0, n, per):
        p1 = min(p0 + per, n)
        rows = torch.full((p1 - p0, L), -1, dtype=torch.long)
        for j, p in enumerate(range(p0, p1)):
            toks = pt.ids[pt.offsets[p]:pt.offsets[p + 1]].long()
            rows[j, :toks.numel()] = toks
        docs = torch.arange(p0, p1)[:, None].expand(-1, L).clone()
        sl = slice(int(bounds[p0]), int(bounds[p1]))
        acts = pt.acts[sl].float()
        local = (pt.passage[sl] - p0) * L + pt.position[sl]
        if max_tokens is not None:
            if seen >= max_tokens:
                return
            acts, local = acts[:max_tokens - seen], local[:max_tokens - seen]
        seen += acts.shape[0]
        yield Chunk(acts, local, rows, docs, p0)


# --- the pass ---------------------------------------------------------------------------------------

@torch.no_grad()
def accumulate(sae, chunks, cfg: StatsConfig, total: int | None = None) -> FeatureStats:
    """Encode each chunk (in pieces of whole rows no bigger than cfg's chunk) and accumulate."""
    from tqdm import tqdm

    device = sae.W_enc.device
    fs = FeatureStats(sae.cfg.d_sae, cfg, device)
    limit = cfg.chunk_for(sae.cfg.d_sae)
    bar = tqdm(total=total, unit="tok", desc="stats", disable=None)
    for ch in chunks:
        for piece in split_chunk(ch, limit):
            f = sae.encode(piece.acts.to(device))
            fs.update(f, piece)
            bar.update(piece.acts.shape[0])
    bar.close()
    return fs


def split_chunk(ch: Chunk, limit: int) -> Iterator[Chunk]:
    """Pieces of whole rows with at most ~limit kept tokens each (a row is never split)."""
    if ch.acts.shape[0] <= limit:
        yield ch
        return
    L = ch.L
    row = ch.local // L
    r = ch.rows.shape[0]
    per_row = torch.bincount(row, minlength=r)
    bounds = torch.zeros(r + 1, dtype=torch.long)
    bounds[1:] = per_row.cumsum(0)
    r0 = 0
    while r0 < r:
        r1 = int(torch.searchsorted(bounds, bounds[r0] + limit, right=True)) - 1
        r1 = min(max(r1, r0 + 1), r)
        sl = slice(int(bounds[r0]), int(bounds[r1]))
        yield Chunk(ch.acts[sl], ch.local[sl] - r0 * L, ch.rows[r0:r1], ch.docs[r0:r1], ch.row_offset + r0)
        r0 = r1


def compute_stats(run_dir: str | Path, cache_dir: str | Path | None = None, dataset: str | None = None,
                  tokens: int | None = None, corpus: str | Path | None = None, cfg: StatsConfig | None = None,
                  model: str | None = None, device: str | None = None, lm=None, out_dir: str | Path | None = None,
                  text_field: str = "text", context_size: int | None = None) -> dict:
    """Write RUN/features/{stats.safetensors, meta.json, vocab.json}; returns a small summary.

    Source: `cache_dir` (activation cache; the model is loaded only for logits and vocabulary),
    `dataset` (any text source, run through the model), else the emotion corpus `corpus` (default:
    the shipped one, all splits) through the passage cache in RUN/labeling/."""
    from labeling.scoring import load_run, passage_tokens

    if cache_dir is not None and dataset is not None:
        raise UserError("give --cache or --dataset, not both")
    cfg = cfg or StatsConfig()
    t0 = time.time()
    lm, sae, hook, outlier_mult = load_run(run_dir, model, device, lm)
    limit = cfg.chunk_for(sae.cfg.d_sae)
    if cache_dir is not None:
        chunks = chunks_from_cache(cache_dir, hook, limit, tokens)
        source = {"kind": "cache", "path": str(Path(cache_dir).resolve())}
        from sae.cache import ActivationCache

        m = ActivationCache.open(cache_dir).manifest
        total = min(tokens or m["n_tokens"], m["n_tokens"])
        if m.get("model_id") and m["model_id"] != lm.model_id:
            raise UserError(f"cache {cache_dir} was harvested from {m['model_id']}, the SAE's model is "
                            f"{lm.model_id}; harvest with the SAE's model")
    elif dataset is not None:
        from sae.data import token_batches

        ctx = context_size or int(sae.cfg.metadata.get("context_size") or 256)
        batches = token_batches(dataset, lm.tokenizer, ctx, max(ctx, 4096), text_field, tokens)
        chunks = chunks_from_batches(lm, hook, batches, outlier_mult)
        source, total = {"kind": "dataset", "path": dataset, "context_size": ctx}, tokens
    else:
        from labeling.corpus import load_corpus

        rows = load_corpus(corpus)
        pt = passage_tokens(lm, [r["text"] for r in rows], hook, outlier_mult,
                            cache_dir=run_root(run_dir) / "labeling")
        chunks = chunks_from_passages(pt, limit, tokens)
        source = {"kind": "corpus", "path": str(corpus) if corpus else "shipped", "n_passages": len(rows)}
        total = min(tokens or pt.acts.shape[0], pt.acts.shape[0])
    fs = accumulate(sae, chunks, cfg, total)
    if fs.n_tokens == 0:
        raise UserError("the source gave no unmasked tokens; check --cache/--dataset/--tokens")
    tensors = fs.finalize()
    tensors.update(logit_effects(sae, lm.model, cfg.n_logits))
    tensors.update(decoder_neighbors(sae.W_dec.detach(), cfg.n_neighbors))
    vocab = vocab_strings(lm.tokenizer, lm.model.get_output_embeddings().weight.shape[0])
    out = Path(out_dir) if out_dir is not None else run_root(run_dir) / "features"
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "stats.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    meta = {FINGERPRINT_KEY: sae_fingerprint(find_sae_dir(run_dir)), "corpus": source, "n_tokens": fs.n_tokens, "window": cfg.window, "k": cfg.k,
            "quantile_bins": cfg.quantile_bins, "samples_per_bin": cfg.samples_per_bin,
            "method": {"quantiles": QUANTILE_METHOD, "histogram": HIST_METHOD,
                       "logits": "decoder row -> final norm (minus norm(0)) -> unembedding",
                       "neighbors": "cosine between decoder rows"},
            "context_size": fs.L, "hook": hook, "d_sae": sae.cfg.d_sae, "model_id": lm.model_id,
            "outlier_mult": outlier_mult, "config": asdict(cfg), "seconds": round(time.time() - t0, 2)}
    write_json_atomic(out / "meta.json", meta)
    write_json_atomic(out / "vocab.json", vocab, indent=None)
    dead = float((tensors["density"] == 0).float().mean())
    summary = {"out": str(out), "n_tokens": fs.n_tokens, "d_sae": sae.cfg.d_sae, "dead": dead,
               "max_act_median": float(tensors["max_act"].median()), "seconds": meta["seconds"],
               "source": source}
    log.info("stats over %d tokens for %d features in %.1fs -> %s", fs.n_tokens, sae.cfg.d_sae, meta["seconds"], out)
    return summary


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="per-feature statistics: top contexts, quantile samples, histograms, logits")
    p.add_argument("run", help="run directory (or any SAELens SAE directory)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--cache", default=None, help="an activation cache holding the SAE's hook (no forward pass)")
    src.add_argument("--dataset", default=None, help="local .jsonl/.txt/.parquet or hub dataset id")
    p.add_argument("--corpus", default=None, help="emotion corpus JSONL (default when no --cache/--dataset: the shipped one)")
    p.add_argument("--tokens", type=int, default=None,
                   help="stop after this many unmasked tokens (--cache/--dataset; a --corpus is read whole)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--k", type=int, default=16, help="top examples per feature")
    p.add_argument("--window", type=int, default=12, help="context tokens on each side")
    p.add_argument("--quantile-bins", type=int, default=8)
    p.add_argument("--samples-per-bin", type=int, default=4)
    p.add_argument("--model", default=None, help="override the model named in the SAE's metadata")
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None, help="output folder (default RUN/features)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the summary as one JSON document")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    from sae.cli import print_json

    for name in ("k", "window", "quantile_bins", "samples_per_bin"):
        if getattr(args, name) < (0 if name == "window" else 1):
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if args.tokens is not None and args.tokens <= 0:
        raise UserError("--tokens must be positive")
    if args.corpus and (args.cache or args.dataset):
        raise UserError("--corpus is a source of its own; give it or --cache/--dataset, not both")
    if args.tokens is not None and not (args.cache or args.dataset):
        raise UserError("--tokens limits a --cache or --dataset; the emotion corpus is read whole, so drop --tokens")
    output_dir(args.out)
    cfg = StatsConfig(k=args.k, window=args.window, quantile_bins=args.quantile_bins,
                      samples_per_bin=args.samples_per_bin, seed=args.seed)
    summary = compute_stats(args.run, cache_dir=args.cache, dataset=args.dataset, tokens=args.tokens,
                            corpus=args.corpus, cfg=cfg, model=args.model, device=args.device, out_dir=args.out,
                            text_field=args.text_field)
    if args.json:
        print_json(summary)
    else:
        print(f"{summary['n_tokens']} tokens, {summary['d_sae']} features, dead {summary['dead']:.3f}, "
              f"{summary['seconds']:.1f}s -> {summary['out']}")
    return 0
