"""A synthetic run directory with every file the browser reads, in the documented formats
(docs/formats.md), for tests, the size/speed benchmark and screenshots before a real run exists.

Contexts are real windows of the shipped emotion corpus (split into word tokens), so pages look
like a real run; activations, labels and scores are random. `hostile=True` plants HTML/JS
payloads in every text the browser shows: passages, tokens, labels, emotion names, config."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import numpy as np

from sae.io import atomic_path, write_json_atomic, write_text_atomic

# Each payload, if it ever ran, would set the title to PWNED, flag window.__pwned or open a dialog.
HOSTILE = [
    "<script>document.title='PWNED';window.__pwned=1</script>",
    "<img src=x onerror=\"alert(1);document.title='PWNED';window.__pwned=1\">",
    "\"><svg onload=\"document.title='PWNED';window.__pwned=1\">",
    "</script><script>document.title='PWNED';window.__pwned=1</script><!--",
    "javascript:document.title='PWNED'",
    "<a href=\"javascript:window.__pwned=1\">click</a>",
    "'\u2028\u2029;window.__pwned=1;//",
]
HOSTILE_LABELS = ["\"><svg onload=\"window.__pwned=1\">", "javascript:window.__pwned=1"]


def _corpus(limit: int = 400) -> list[tuple[str, str]]:
    base = resources.files("labeling") / "data" / "corpus"
    rows = []
    for f in sorted(base.iterdir(), key=lambda p: p.name):
        if f.name.endswith(".jsonl"):
            for line in f.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    r = json.loads(line)
                    rows.append((r["text"], r.get("emotion", "neutral")))
    rng = np.random.default_rng(0)
    order = rng.permutation(len(rows))[:limit]
    return [rows[i] for i in order]


def make_synthetic_run(out: str | Path, d_sae: int = 256, d_in: int = 64, k_top: int = 16, window: int = 12,
                       quantile_bins: int = 8, samples_per_bin: int = 4, labeled_frac: float = 0.3,
                       hostile: bool = False, images: bool = True, sae: bool = True, seed: int = 0,
                       hook: str = "blocks.15.hook_resid_post") -> Path:
    """Write a run directory at `out` and return its path."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    docs = _corpus()
    tok_re = re.compile(r"\s?\w+|\s?[^\w\s]|\s+")
    vocab: list[str] = []
    ids_of: dict[str, int] = {}
    stream: list[int] = []
    doc_emotion: list[str] = []
    for d, (text, emotion) in enumerate(docs):
        toks = tok_re.findall(text)
        if hostile and d % 5 == 0:  # a payload as one token inside the passage
            toks.insert(min(12, len(toks)), HOSTILE[d // 5 % len(HOSTILE)])
        for t in toks:
            if t not in ids_of:
                ids_of[t] = len(vocab)
                vocab.append(t)
            stream.append(ids_of[t])
            doc_emotion.append(emotion)
    corpus = np.array(stream, dtype=np.int64)
    emo_arr = np.array(doc_emotion)
    emotions = sorted(set(doc_emotion) - {"neutral"})
    if hostile:
        emotions = emotions[:8] + HOSTILE_LABELS
    n, T = len(corpus), 2 * window + 1

    # labels: a fraction of features get an emotion, with scores
    labeled = rng.random(d_sae) < labeled_frac
    label_of = np.where(labeled, rng.integers(0, len(emotions), d_sae), -1)
    score = np.where(labeled, rng.uniform(0.6, 0.995, d_sae), np.nan)

    # statistics
    dead = rng.random(d_sae) < 0.03
    max_act = np.where(dead, 0.0, rng.lognormal(1.5, 0.5, d_sae)).astype(np.float32)
    density = np.where(dead, 0.0, np.exp(rng.uniform(np.log(1e-5), np.log(0.05), d_sae))).astype(np.float32)
    positions_by_emotion = {e: np.flatnonzero((emo_arr == e)[window:n - window]) + window for e in set(doc_emotion)}
    all_pos = np.arange(window, n - window)
    centers = rng.choice(all_pos, size=(d_sae, k_top + quantile_bins * samples_per_bin))
    for e_idx, e in enumerate(emotions):
        rows = np.flatnonzero(label_of == e_idx)
        pool = positions_by_emotion.get(e)
        if len(rows) and pool is not None and len(pool):
            centers[rows, :k_top] = rng.choice(pool, size=(len(rows), k_top))
    win = centers[..., None] + np.arange(-window, window + 1)
    tokens = corpus[win].astype(np.int32)
    edge = rng.random((d_sae, centers.shape[1])) < 0.1  # some windows hit a document edge
    tokens[:, :, :2] = np.where(edge[..., None], -1, tokens[:, :, :2])
    if hostile:  # every feature's top context has a payload token at its peak
        payload = np.array([ids_of[t] for t in HOSTILE])
        tokens[:, 0, window] = payload[np.arange(d_sae) % len(payload)]
    top_acts = np.sort(rng.uniform(0.3, 1.0, (d_sae, k_top)), axis=1)[:, ::-1] * max_act[:, None]
    q_acts = np.sort(rng.uniform(0.01, 0.3, (d_sae, quantile_bins, samples_per_bin)).reshape(d_sae, -1), axis=1)
    q_acts = (q_acts * max_act[:, None]).astype(np.float32)
    peak = np.concatenate([top_acts, q_acts], axis=1)
    tacts = rng.uniform(0, 1, (d_sae, peak.shape[1], T)) * (rng.random((d_sae, peak.shape[1], T)) < 0.2)
    tacts = tacts * peak[..., None] * 0.7
    tacts[:, :, window] = peak
    tacts = np.where(tokens >= 0, tacts, 0.0).astype(np.float32)
    index = (centers + rng.integers(0, 10, centers.shape) * n).astype(np.int64)
    index[dead] = -1
    tokens[dead] = -1
    tacts[dead] = 0.0
    kq = k_top
    counts = (rng.exponential(1.0, (d_sae, 32)) * np.exp(-np.arange(32) / 6.0) * 5000).astype(np.int32)
    counts[dead] = 0
    edges = np.linspace(0.0, 1.0, 33)[None, :] * max_act[:, None]
    vsz = len(vocab)
    stats = {
        "max_act": max_act, "density": density,
        "hist_counts": counts, "hist_edges": edges.astype(np.float32),
        "top_acts": top_acts.astype(np.float32), "top_index": index[:, :kq], "top_tokens": tokens[:, :kq],
        "top_token_acts": tacts[:, :kq],
        "quantile_acts": q_acts, "quantile_index": index[:, kq:], "quantile_tokens": tokens[:, kq:],
        "quantile_token_acts": tacts[:, kq:],
        "logit_pos_ids": rng.integers(0, vsz, (d_sae, 10)).astype(np.int64),
        "logit_pos_vals": np.sort(rng.uniform(0.2, 2.0, (d_sae, 10)), axis=1)[:, ::-1].astype(np.float32),
        "logit_neg_ids": rng.integers(0, vsz, (d_sae, 10)).astype(np.int64),
        "logit_neg_vals": -np.sort(rng.uniform(0.2, 2.0, (d_sae, 10)), axis=1)[:, ::-1].astype(np.float32),
        "neighbor_ids": rng.integers(0, d_sae, (d_sae, 10)).astype(np.int64),
        "neighbor_cos": np.sort(rng.uniform(0.1, 0.6, (d_sae, 10)), axis=1)[:, ::-1].astype(np.float32),
    }
    from safetensors.numpy import save_file

    (out / "features").mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "features" / "stats.safetensors") as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in stats.items()}, str(tmp))
    write_json_atomic(out / "features" / "meta.json", {
        "corpus": "synthetic", "n_tokens": int(n * 10), "window": window, "k": k_top,
        "quantile_bins": quantile_bins, "samples_per_bin": samples_per_bin,
        "method": "synthetic: equal-count bins over non-zero activations, uniform samples per bin"})
    write_json_atomic(out / "features" / "vocab.json", vocab, indent=None)

    # labels.json
    feats = {}
    texts_by_emotion: dict[str, list[str]] = {}
    for text, e in docs:
        texts_by_emotion.setdefault(e, []).append(text)
    for i in np.flatnonzero(labeled).tolist():
        e = emotions[label_of[i]]
        pool = texts_by_emotion.get(e) or [t for t, _ in docs[:20]]
        ev = [{"text": pool[j % len(pool)], "emotion": e, "act": float(max_act[i] * (0.9 - 0.1 * j))} for j in range(3)]
        if hostile and i % 3 == 0:
            ev[0] = {"text": " ".join(HOSTILE), "emotion": HOSTILE[0], "act": 1.0}
        feats[str(i)] = {"label": e, "score": float(score[i]), "auroc": float(score[i]), "evidence": ev}
    for i in rng.choice(np.flatnonzero(~labeled), size=min(20, int((~labeled).sum())), replace=False).tolist():
        feats[str(i)] = {"label": None, "score": float(rng.uniform(0.5, 0.6)), "auroc": float(rng.uniform(0.5, 0.6)), "evidence": []}
    ranked = {}
    for e_idx, e in enumerate(emotions):
        rows = np.flatnonzero(label_of == e_idx)
        rows = rows[np.argsort(-score[rows])][:10]
        ranked[e] = []
        for i in rows.tolist():
            h = float(np.clip(score[i] - rng.uniform(0, 0.08), 0.5, 1.0))
            ranked[e].append({"feature": int(i), "auroc": float(score[i]), "heldout_auroc": h,
                              "ci": [max(0.5, h - 0.05), min(1.0, h + 0.04)], "precision_at_k": float(rng.uniform(0.3, 1.0))})
    labels = {"corpus": "synthetic" if not hostile else HOSTILE[0],
              "settings": {"skip_tokens": 4, "split": "train", "note": HOSTILE[3] if hostile else "synthetic run"},
              "features": feats, "emotions": ranked,
              "null": {"auroc_mean": 0.5, "auroc_p95": 0.61, "n_shuffles": 100},
              "heldout": {"macro_auroc": 0.87, "n_auroc_ge_0_9": sum(1 for r in ranked.values() if r and r[0]["heldout_auroc"] >= 0.9),
                          "n_emotions": len(emotions)},
              "aligned": {e: [{"feature": int(j), "cos": float(rng.uniform(0.2, 0.7))} for j in rng.integers(0, d_sae, 5)]
                          for e in emotions}}
    write_json_atomic(out / "labels.json", labels)

    # metrics, config, geometry, vectors, SAE
    steps = np.arange(0, 2000, 20)
    history = [{"step": int(s), "tokens": int(s * 4096), "loss": float(1.0 / (1 + s / 200)), "fve": float(0.9 * (1 - np.exp(-s / 300))),
                "l0": 32.0, "dead": float(0.3 * np.exp(-s / 500)), "lr": 4e-4} for s in steps]
    metrics = {"fve": 0.88, "mse": 0.01, "l0": 32.0, "dead": 0.02, "dense": 0.0, "mean_resid_norm": 172.0,
               "ce_clean": 3.1, "ce_sae": 3.3, "ce_zero": 7.9, "ce_loss_score": 0.96, "tokens": 8_192_000,
               "seconds": 600.0, "tokens_per_s": 13653.0, "history": history}
    if hostile:
        metrics[HOSTILE[2]] = HOSTILE[1]
        metrics["__proto__"] = {"polluted": "__proto__ is a key"}  # an object literal would drop it
    write_json_atomic(out / "metrics.json", metrics)
    config = (f"model: smollm2-135m\nhook: {hook}\nsae:\n  arch: topk\n  d_sae: {d_sae}\n  k: 32\n"
              f"train:\n  tokens: 8192000\n  lr: 0.0004\nseed: {seed}\n")
    if hostile:
        config += "# " + " ".join(HOSTILE) + "\n"
    write_text_atomic(out / "config.yaml", config)
    ang = np.linspace(0, 2 * np.pi, len(emotions), endpoint=False)
    coords = np.stack([np.cos(ang), 0.6 * np.sin(ang)], axis=1) + rng.normal(0, 0.05, (len(emotions), 2))
    write_json_atomic(out / "geometry.json", {"emotions": emotions, "coords": coords.round(4).tolist(),
                                              "explained_variance": [0.31, 0.17], "pc1_valence_r": 0.82, "n": len(emotions)})
    layer = int(re.search(r"\d+", hook).group(0))
    vecs = rng.normal(size=(len(emotions), d_in)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    (out / "vectors").mkdir(exist_ok=True)
    with atomic_path(out / "vectors" / "vectors.safetensors") as tmp:
        save_file({f"layer_{layer}": vecs}, str(tmp), metadata={"emotions": json.dumps(emotions)})
    write_json_atomic(out / "vectors" / "vectors.json", {"emotions": emotions, "layers": [layer],
                                                         "heldout_auroc": {str(layer): 0.9}, "best_layer": layer, "skip_tokens": 4})
    if sae:
        import torch

        from sae.architectures import SAEConfig, SparseAutoencoder

        model = SparseAutoencoder(SAEConfig(arch="topk", d_in=d_in, d_sae=d_sae, k=16, hook_name=hook,
                                            metadata={"model_id": "smollm2-135m-instruct-q4_1"}))
        model.init_weights(torch.Generator().manual_seed(seed))
        model.save(out / "sae")
    if images:
        _plots(out, history, emotions, coords)
    return out


def _plots(out: Path, history: list[dict], emotions: list[str], coords: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(8, 3))
    ax[0].plot([h["step"] for h in history], [h["loss"] for h in history])
    ax[0].set_title("loss")
    ax[1].plot([h["step"] for h in history], [h["fve"] for h in history])
    ax[1].set_title("FVE")
    fig.tight_layout()
    with atomic_path(out / "curves.png") as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(coords[:, 0], coords[:, 1])
    for (x, y), e in zip(coords, emotions):
        ax.annotate(e[:20], (x, y), fontsize=7)
    with atomic_path(out / "emotion_map.png") as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
