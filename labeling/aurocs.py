"""AUROC of scores for one emotion against the rest, the emotion's near-synonyms left out.

All one-vs-rest scoring in emosae (labels, held-out checks, `label --eval`, emotion vectors)
goes through here, so every number compares the same positives with the same negatives:
positives = rows of the emotion; negatives = every other row (neutral included) except rows of
its cluster mates (`labeling.corpus.cluster_mates`). Ties count one half."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from labeling.corpus import NEUTRAL, cluster_mates


def split_masks(labels: np.ndarray, emotion: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positive, negative, excluded) boolean masks over rows for `emotion`."""
    pos = labels == emotion
    mates = sorted(cluster_mates(emotion))
    excl = np.isin(labels, mates) if mates else np.zeros_like(pos)
    return pos, ~pos & ~excl, excl


def auroc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC of positives [p, ...] against negatives [q, ...] (per trailing column)."""
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return np.full(pos.shape[1:], np.nan)
    allv = np.concatenate([pos, neg], axis=0)
    ranks = rankdata(allv, axis=0)
    u = ranks[: len(pos)].sum(0) - len(pos) * (len(pos) + 1) / 2
    return u / (len(pos) * len(neg))


class RankedScores:
    """Scores [n, d] ranked once per column, so AUROC for any labeling (true or shuffled) costs
    a gather plus the comparisons against the few excluded rows."""

    def __init__(self, scores: np.ndarray):
        self.scores = np.asarray(scores, dtype=np.float32)
        self.ranks = rankdata(self.scores, axis=0).astype(np.float64)

    def auroc(self, pos: np.ndarray, excl: np.ndarray) -> np.ndarray:
        """[d] AUROC of every column, rows in `pos` vs rows neither in `pos` nor `excl`."""
        n_pos = int(pos.sum())
        n_neg = len(pos) - n_pos - int(excl.sum())
        if n_pos == 0 or n_neg == 0:
            return np.full(self.scores.shape[1], np.nan)
        u_all = self.ranks[pos].sum(0) - n_pos * (n_pos + 1) / 2  # pos vs (neg + excl)
        if excl.any():  # U(pos vs excluded), from ranks within pos + excluded rows
            sub = rankdata(self.scores[pos | excl], axis=0)
            in_pos = pos[pos | excl]
            u_all = u_all - (sub[in_pos].sum(0) - n_pos * (n_pos + 1) / 2)
        return u_all / (n_pos * n_neg)


def precision_at_k(scores: np.ndarray, pos: np.ndarray, neg: np.ndarray, k: int) -> np.ndarray:
    """[d] fraction of positives among each column's top-k rows of pos+neg (ties by row order)."""
    use = pos | neg
    s = scores[use]
    y = pos[use]
    k = max(1, min(k, len(s)))
    top = np.argpartition(-s, k - 1, axis=0)[:k]
    return y[top].mean(0)


def bootstrap_auroc(pos: np.ndarray, neg: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[B, m] AUROC of m columns on B stratified bootstrap resamples (positives and negatives
    resampled separately). Resampling is done with multinomial weights, so one sort per column
    serves every resample."""
    pos = np.asarray(pos, dtype=np.float64).reshape(len(pos), -1)
    neg = np.asarray(neg, dtype=np.float64).reshape(len(neg), -1)
    n_p, n_n = len(pos), len(neg)
    wp = rng.multinomial(n_p, np.full(n_p, 1 / n_p), size=n_boot).astype(np.float64)
    wn = rng.multinomial(n_n, np.full(n_n, 1 / n_n), size=n_boot).astype(np.float64)
    out = np.empty((n_boot, pos.shape[1]))
    for j in range(pos.shape[1]):
        order = np.argsort(neg[:, j], kind="stable")
        s = neg[order, j]
        cw = np.zeros((n_boot, n_n + 1))
        np.cumsum(wn[:, order], axis=1, out=cw[:, 1:])
        lo = np.searchsorted(s, pos[:, j], side="left")
        hi = np.searchsorted(s, pos[:, j], side="right")
        below = (cw[:, lo] + cw[:, hi]) / 2  # [B, n_p]: weighted negatives under each positive
        out[:, j] = (wp * below).sum(1) / (n_p * n_n)
    return out


def ci(samples: np.ndarray, level: float = 0.95) -> list[float] | None:
    """The central `level` interval of bootstrap samples (None without samples: --n-boot 0)."""
    if len(samples) == 0:
        return None
    a = (1 - level) / 2
    lo, hi = np.nanquantile(samples, [a, 1 - a], axis=0)
    return [round(float(lo), 4), round(float(hi), 4)]


def emotion_aurocs(scores: dict[str, np.ndarray], labels: list[str] | np.ndarray, n_boot: int = 1000,
                   seed: int = 0, threshold: float = 0.9) -> dict:
    """One score vector per emotion over the same rows -> per-emotion AUROC with a bootstrap CI,
    and the summary the acceptance asks for (how many emotions reach `threshold`, macro AUROC).

    Used for SAE features (`{emotion: acts of its feature}`) and emotion-vector projections alike."""
    labels = np.asarray([str(x) for x in labels])
    rng = np.random.default_rng(seed)
    per: dict[str, dict] = {}
    for emotion, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        pos, neg, _ = split_masks(labels, emotion)
        if not pos.any() or not neg.any():
            continue
        a = float(auroc(s[pos][:, None], s[neg][:, None])[0])
        boots = bootstrap_auroc(s[pos], s[neg], n_boot, rng) if n_boot else None
        per[emotion] = {"auroc": round(a, 4), "ci": ci(boots[:, 0]) if boots is not None else None,
                        "n_pos": int(pos.sum()), "n_neg": int(neg.sum())}
    return summarize(per, threshold)


def summarize(per: dict[str, dict], threshold: float = 0.9) -> dict:
    vals = [v["auroc"] for v in per.values() if v.get("auroc") is not None]
    passing = sorted((e for e, v in per.items() if v.get("auroc") is not None and v["auroc"] >= threshold))
    return {"per_emotion": per, "n_emotions": len(per), "threshold": threshold,
            "n_at_threshold": len(passing), "emotions_at_threshold": passing,
            "macro_auroc": round(float(np.mean(vals)), 4) if vals else None}


def emotions_of(labels: np.ndarray) -> list[str]:
    return [e for e in dict.fromkeys(labels.tolist()) if e != NEUTRAL]
