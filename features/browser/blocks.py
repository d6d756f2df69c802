"""The browser's data, as plain dicts: the feature list (columns), blocks of feature pages, the
emotions page and the run page. Everything here is bounded per feature (a fixed number of
contexts, samples and evidence passages, each of bounded length), so page weight and export size
grow linearly with d_sae at a known rate."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from features.browser.rundata import RunData


@dataclass
class Options:
    """What a feature block keeps (the bounds behind the export size)."""

    block_size: int = 32  # features per data file (one is loaded to show a feature page)
    max_top: int = 20  # top activating contexts per feature
    max_per_bin: int = 2  # samples per quantile bin
    max_evidence: int = 8  # labeling evidence passages per feature
    max_text: int = 1200  # characters per passage
    max_map_features: int = 3000  # features drawn on the emotion map


# --- small helpers --------------------------------------------------------------------------

def sig(a: Any, digits: int = 4) -> list:
    """Numbers rounded to `digits` significant digits as a list (NaN/inf -> None), so the JSON
    carries `0.1234` rather than `0.12340000271797180`."""
    a = np.asarray(a, dtype=np.float64)
    out = np.zeros(a.shape, dtype=np.float64)
    finite = np.isfinite(a)
    nz = finite & (a != 0)
    if nz.any():
        v = a[nz]
        e = (digits - 1 - np.floor(np.log10(np.abs(v)))).astype(np.int64)
        pos = e >= 0
        r = np.empty_like(v)
        r[pos] = np.round(v[pos] * 10.0 ** e[pos]) / 10.0 ** e[pos]
        r[~pos] = np.round(v[~pos] / 10.0 ** -e[~pos]) * 10.0 ** -e[~pos]
        out[nz] = r
    lst = out.tolist()
    if not finite.all():
        if out.ndim == 0:
            return None  # type: ignore[return-value]
        flat_bad = np.argwhere(~finite)
        for idx in flat_bad:
            ref = lst
            for j in idx[:-1]:
                ref = ref[j]
            ref[idx[-1]] = None
    return lst


def num(x: Any, digits: int = 4) -> float | None:
    """One number, rounded, or None when it is missing or not a finite number."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.floating, np.integer)):
        return None
    x = float(x)
    if not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def bounded(obj: Any, depth: int = 6, max_list: int = 200, max_str: int = 4000) -> Any:
    """A copy of free-form JSON (labels' null/heldout/settings, SAE config) cut to a bounded size."""
    if depth <= 0:
        return "…"
    if isinstance(obj, dict):
        items = list(obj.items())[:max_list]
        return {str(k)[:200]: bounded(v, depth - 1, max_list, max_str) for k, v in items}
    if isinstance(obj, (list, tuple)):
        out = [bounded(v, depth - 1, max_list, max_str) for v in obj[:max_list]]
        if len(obj) > max_list:
            out.append(f"… {len(obj) - max_list} more")
        return out
    if isinstance(obj, str):
        return obj if len(obj) <= max_str else obj[:max_str] + "…"
    if isinstance(obj, float):
        return num(obj, 6)
    if obj is None or isinstance(obj, (bool, int)):
        return obj
    return str(obj)[:max_str]


def _text(x: Any, limit: int) -> str:
    s = x if isinstance(x, str) else ("" if x is None else str(x))
    return s if len(s) <= limit else s[:limit] + "…"


def _feature_labels(run: RunData) -> dict[int, dict]:
    """labels.json's per-feature entries keyed by int (computed once per run)."""
    cached = run.cache.get("feature_labels")
    if cached is not None:
        return cached
    out = run.cache["feature_labels"] = {}
    for k, v in (run.labels.get("features") or {}).items():
        try:
            i = int(k)
        except (TypeError, ValueError):
            continue
        if 0 <= i < run.d_sae and isinstance(v, dict):
            out[i] = v
    return out


def _emotions(run: RunData) -> dict[str, list[dict]]:
    emo = run.labels.get("emotions") or {}
    return {str(k): [r for r in v if isinstance(r, dict)] for k, v in emo.items() if isinstance(v, list)}


# --- the feature list ------------------------------------------------------------------------

def index_data(run: RunData) -> dict:
    """Columns for every feature: label (index into `labels`), score, AUROC, held-out AUROC,
    density, max activation. Columnar, so 16k features parse in milliseconds."""
    n = run.d_sae
    feats = _feature_labels(run)
    names = sorted({v["label"] for v in feats.values() if isinstance(v.get("label"), str)})
    pos = {name: j for j, name in enumerate(names)}
    lab = np.full(n, -1, dtype=np.int64)
    score = np.full(n, np.nan)
    auroc = np.full(n, np.nan)
    heldout = np.full(n, np.nan)
    for i, v in feats.items():
        if isinstance(v.get("label"), str):
            lab[i] = pos[v["label"]]
        for arr, key in ((score, "score"), (auroc, "auroc")):
            x = num(v.get(key))
            if x is not None:
                arr[i] = x
    for emotion, ranked in _emotions(run).items():
        for r in ranked:
            i = r.get("feature")
            if isinstance(i, int) and 0 <= i < n and lab[i] >= 0 and names[lab[i]] == emotion:
                x = num(r.get("heldout_auroc"))
                if x is not None:
                    heldout[i] = x
    density = run.density if run.density is not None else np.full(n, np.nan)
    max_act = run.max_act if run.max_act is not None else np.full(n, np.nan)
    return {"n": n, "labels": names, "label": lab.tolist(), "score": sig(score), "auroc": sig(auroc),
            "heldout": sig(heldout), "density": sig(density, 3), "max_act": sig(max_act, 4)}


# --- feature pages ---------------------------------------------------------------------------

B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_ALPHABET = np.frombuffer(B64, dtype=np.uint8)
ACT_LEVELS = 4095  # per-token values are stored in 1/4095ths of the feature's scale (2 digits)


def b64_fixed(values: np.ndarray, width: int) -> np.ndarray:
    """Rows of non-negative ints (< 64**width) as strings of fixed-width base64url digits, most
    significant first: [..., L] -> [...] of str with L*width characters. No JSON escaping is ever
    needed and a context costs ~2-3 characters per token instead of ~8 as a JSON array."""
    v = np.asarray(values, dtype=np.int64)
    lead, L = v.shape[:-1], v.shape[-1]
    if L * width == 0:
        return np.full(lead, "", dtype=object)
    shifts = 6 * np.arange(width - 1, -1, -1)
    chars = _ALPHABET[(v[..., None] >> shifts) & 63].reshape(-1, L * width)
    return np.ascontiguousarray(chars).view(f"S{L * width}")[:, 0].astype(str).reshape(lead)


def digits_for(n: int) -> int:
    """Base-64 digits needed for values 0..n."""
    w = 1
    while 64 ** w <= n:
        w += 1
    return w


def _encode(tokens: np.ndarray, token_acts: np.ndarray, scale: np.ndarray, tw: int) -> tuple[np.ndarray, np.ndarray]:
    """Token windows (-1 = outside the document) and per-token values of a block, encoded:
    tokens densely (`tw` digits each, id + 1), values sparsely as (position, value) pairs of the
    non-zero ones only (`digits_for(T - 1)` + 2 digits each) — most of a window is zero."""
    q = np.rint(token_acts / scale[:, None, None] * ACT_LEVELS)
    q = np.nan_to_num(q, nan=0.0, posinf=0.0, neginf=0.0).clip(0, ACT_LEVELS).astype(np.int64)
    lead, T = q.shape[:-1], q.shape[-1]
    pw = digits_for(max(T - 1, 0))
    if T == 0:
        return b64_fixed(tokens.astype(np.int64) + 1, tw), np.full(lead, "", dtype=object)
    shifts_p, shifts_v = 6 * np.arange(pw - 1, -1, -1), 6 * np.arange(1, -1, -1)
    pos = np.broadcast_to(np.arange(T), q.shape)
    chars = np.concatenate([_ALPHABET[(pos[..., None] >> shifts_p) & 63], _ALPHABET[(q[..., None] >> shifts_v) & 63]], -1)
    chars[q == 0] = ord(".")  # dropped below
    rows = np.ascontiguousarray(chars.reshape(-1, T * (pw + 2))).view(f"S{T * (pw + 2)}")[:, 0]
    sparse = np.char.replace(rows, b".", b"").astype(str).reshape(lead)
    return b64_fixed(tokens.astype(np.int64) + 1, tw), sparse


def _pick(f: int, t: np.ndarray, a: np.ndarray, acts: list, cols: list[int], docs: list | None) -> dict:
    out = {"v": [acts[f][j] for j in cols], "t": t[f][cols].tolist(), "a": a[f][cols].tolist()}
    if docs is not None:
        out["d"] = [docs[f][j] for j in cols]
    return out


def _docs(st: dict, key: str) -> list | None:
    return st[key].astype(np.int64).tolist() if key in st else None


def _contexts(st: dict, scale: np.ndarray, keep: int, tw: int) -> list[dict] | None:
    """Per feature: {"v": activations, "t"/"a": encoded windows, "d": document ids}, best first,
    empty slots (index -1) dropped."""
    if not all(k in st for k in ("top_acts", "top_tokens", "top_token_acts")):
        return None
    acts, index = st["top_acts"], st.get("top_index")
    t, a = _encode(st["top_tokens"], st["top_token_acts"], scale, tw)
    valid = index >= 0 if index is not None else np.isfinite(acts) & (acts > 0)
    order = np.argsort(-np.nan_to_num(acts, nan=-np.inf), axis=1, kind="stable").tolist()
    valid_l, acts_l, docs = valid.tolist(), sig(acts), _docs(st, "top_doc")
    return [_pick(f, t, a, acts_l, [j for j in order[f] if valid_l[f][j]][:keep], docs) for f in range(acts.shape[0])]


def _quantiles(run: RunData, st: dict, scale: np.ndarray, per_bin: int, tw: int) -> list[dict] | None:
    """Per feature: up to `per_bin` samples of each quantile bin, with their bin numbers."""
    need = ("quantile_acts", "quantile_tokens", "quantile_token_acts")
    if not all(k in st for k in need):
        return None
    acts, index = st["quantile_acts"], st.get("quantile_index")
    b, m = acts.shape[:2]
    qb = int(run.meta.get("quantile_bins") or 0)
    spb = int(run.meta.get("samples_per_bin") or 0)
    if qb <= 0 or spb <= 0 or qb * spb != m:
        qb, spb = 1, m
    t, a = _encode(st["quantile_tokens"], st["quantile_token_acts"], scale, tw)
    valid = (index >= 0 if index is not None else acts > 0).tolist()
    acts_l, docs = sig(acts), _docs(st, "quantile_doc")
    out = []
    for f in range(b):
        sel, bins = [], []
        for qi in range(qb):
            cols = [qi * spb + j for j in range(spb) if valid[f][qi * spb + j]][:per_bin]
            sel += cols
            bins += [qi] * len(cols)
        d = _pick(f, t, a, acts_l, sel, docs)
        d["bin"] = bins
        out.append(d)
    return out


def _local_strings(run: RunData, arrays: list[np.ndarray]) -> tuple[list[str], list[np.ndarray]]:
    """One string table per block: token ids become indices into it (-1 stays -1)."""
    valid = [a[a >= 0] for a in arrays if a is not None]
    uniq = np.unique(np.concatenate(valid)) if valid else np.zeros(0, dtype=np.int64)
    vocab = run.vocab
    strings = [vocab[i] if vocab is not None and i < len(vocab) else f"⟨{i}⟩" for i in uniq.tolist()]
    mapped = []
    for a in arrays:
        if a is None:
            mapped.append(None)
            continue
        m = np.searchsorted(uniq, np.where(a >= 0, a, 0))
        mapped.append(np.where(a >= 0, m, -1))
    return strings, mapped


def n_blocks(run: RunData, opts: Options) -> int:
    return (run.d_sae + opts.block_size - 1) // opts.block_size


def feature_block(run: RunData, block: int, opts: Options) -> dict:
    """Feature pages for features block*B .. (block+1)*B - 1."""
    lo = block * opts.block_size
    hi = min(run.d_sae, lo + opts.block_size)
    st = run.stats_block(lo, hi)
    labs = _feature_labels(run)
    m = hi - lo
    ids_keys = ("top_tokens", "quantile_tokens", "logit_pos_ids", "logit_neg_ids")
    strings, mapped = _local_strings(run, [st.get(k) for k in ids_keys])
    st = dict(st)
    for k, a in zip(ids_keys, mapped):
        if a is not None:
            st[k] = a
    max_act = st["max_act"].astype(np.float64) if "max_act" in st else np.zeros(m)
    scale = max_act.copy()
    for key in ("top_token_acts", "quantile_token_acts"):
        if key in st:
            scale = np.maximum(scale, np.nan_to_num(st[key].reshape(m, -1), nan=0.0).max(axis=1, initial=0.0))
    scale = np.where(scale > 0, scale, 1.0)

    tw = digits_for(len(strings))  # token ids are stored +1 (0 = outside the document)
    top = _contexts(st, scale, opts.max_top, tw)
    quant = _quantiles(run, st, scale, opts.max_per_bin, tw)
    align = run.alignment_block(lo, hi)

    # everything per block first (numpy on whole arrays), then cheap list lookups per feature
    max_l, scale_l = sig(max_act), sig(scale, 6)
    dens_l = sig(st["density"], 3) if "density" in st else None
    hist = None
    if "hist_counts" in st:
        edges = st.get("hist_edges")
        lo_l = sig(edges[:, 0]) if edges is not None else [0.0] * m
        hi_l = sig(edges[:, -1]) if edges is not None else max_l
        hist = (st["hist_counts"].astype(np.int64).tolist(), lo_l, hi_l)
    pairs = {}
    for key, ids, vals in (("lp", "logit_pos_ids", "logit_pos_vals"), ("ln", "logit_neg_ids", "logit_neg_vals"),
                           ("nb", "neighbor_ids", "neighbor_cos")):
        if ids in st and vals in st:
            limit = run.d_sae if key == "nb" else 1 << 62
            pairs[key] = [[[j, x] for j, x in zip(row_i, row_v) if 0 <= j < limit]
                          for row_i, row_v in zip(st[ids].astype(np.int64).tolist(), sig(st[vals], 3))]
    al = None
    if align is not None:
        order = np.argsort(-align, axis=1)
        picks = np.concatenate([order[:, :5], order[:, -3:][:, ::-1]], axis=1)
        al = [[[j, x] for j, x in zip(p, v)] for p, v in
              zip(picks.tolist(), sig(np.take_along_axis(align, picks, axis=1), 3))]

    feats = []
    for f in range(m):
        i = lo + f
        d: dict[str, Any] = {"id": i}
        lab = labs.get(i)
        if lab is not None:
            ev = [e for e in (lab.get("evidence") or []) if isinstance(e, dict)][: opts.max_evidence]
            d["lab"] = {"label": lab["label"] if isinstance(lab.get("label"), str) else None,
                        "score": num(lab.get("score")), "auroc": num(lab.get("auroc")),
                        "evidence": [{"text": _text(e.get("text"), opts.max_text),
                                      "emotion": _text(e.get("emotion"), 100), "act": num(e.get("act"))} for e in ev]}
            if isinstance(lab.get("explanation"), str):
                d["lab"]["explanation"] = _text(lab["explanation"], opts.max_text)
        if st:
            d["max"], d["sc"] = max_l[f], scale_l[f]
            if dens_l is not None:
                d["dens"] = dens_l[f]
        if top is not None:
            d["top"] = top[f]
        if quant is not None:
            d["q"] = quant[f]
        if hist is not None:
            d["hist"] = {"c": hist[0][f], "lo": hist[1][f], "hi": hist[2][f]}
        for key, rows in pairs.items():
            d[key] = rows[f]
        if al is not None:
            d["al"] = al[f]
        feats.append(d)
    T = next((st[k].shape[-1] for k in ("top_tokens", "quantile_tokens") if k in st), 0)
    return {"block": block, "lo": lo, "strings": strings, "tw": tw, "pw": digits_for(max(T - 1, 0)), "aq": ACT_LEVELS,
            "features": feats}


# --- emotions page ---------------------------------------------------------------------------

def _xy(p: Any) -> tuple[float, float] | None:
    if isinstance(p, (list, tuple)) and len(p) >= 2:
        x, y = num(p[0], 5), num(p[1], 5)
    elif isinstance(p, dict):
        x = num(next((p[k] for k in ("x", "pc1", "PC1") if k in p), None), 5)
        y = num(next((p[k] for k in ("y", "pc2", "PC2") if k in p), None), 5)
    else:
        return None
    return (x, y) if x is not None and y is not None else None


def map_points(geo: dict | None) -> dict | None:
    """Emotion coordinates from geometry.json, whichever of the plausible layouts it uses:
    {"emotions": [...], "coords"|"points"|"pcs"|"xy": [[x, y], ...]}, {"points": {emotion: [x, y]}},
    {"points": [{"emotion", "x"|"pc1", "y"|"pc2"}]}, {"emotions": {emotion: {"pc1", "pc2"}}} or
    {"emotions": [...], "pc1": [...], "pc2": [...]}. Valence x arousal is used when every point
    has both (norms were given)."""
    if not isinstance(geo, dict):
        return None
    names = geo.get("emotions")
    pts: dict[str, Any] = {}
    if isinstance(names, list):
        for key in ("coords", "points", "pcs", "xy", "projections", "pc"):
            arr = geo.get(key)
            if isinstance(arr, list) and len(arr) == len(names):
                pts = {str(n): a for n, a in zip(names, arr)}
                break
        if not pts and isinstance(geo.get("pc1"), list) and isinstance(geo.get("pc2"), list):
            pts = {str(n): [a, b] for n, a, b in zip(names, geo["pc1"], geo["pc2"])}
    elif isinstance(names, dict):
        pts = {str(k): v for k, v in names.items()}
    if not pts:
        raw = geo.get("points")
        if isinstance(raw, dict):
            pts = {str(k): v for k, v in raw.items()}
        elif isinstance(raw, list):
            pts = {str(p.get("emotion", p.get("name"))): p for p in raw if isinstance(p, dict)}
    if not pts:
        return None
    va = all(isinstance(p, dict) and num(p.get("valence")) is not None and num(p.get("arousal")) is not None
             for p in pts.values())
    points = []
    for name, p in pts.items():
        xy = (num(p["valence"], 5), num(p["arousal"], 5)) if va else _xy(p)
        if xy is not None:
            points.append({"name": name, "x": xy[0], "y": xy[1]})
    if not points:
        return None
    labels = geo.get("axes") if isinstance(geo.get("axes"), list) and len(geo["axes"]) >= 2 else None
    xl, yl = (("valence", "arousal") if va else (str(labels[0]), str(labels[1])) if labels else ("PC1", "PC2"))
    return {"x_label": xl, "y_label": yl, "points": points}


def _place_features(emap: dict, run: RunData, opts: Options) -> list:
    """Labeled features drawn in a small sunflower around their emotion's point (the map shows
    which emotions have features and how strongly, not a projection of the features)."""
    xs = [p["x"] for p in emap["points"]]
    ys = [p["y"] for p in emap["points"]]
    spread_x = 0.04 * (max(xs) - min(xs) or 1.0)
    spread_y = 0.04 * (max(ys) - min(ys) or 1.0)
    at = {p["name"]: (p["x"], p["y"]) for p in emap["points"]}
    by_emotion: dict[str, list[tuple[float, int]]] = {}
    for i, v in _feature_labels(run).items():
        if isinstance(v.get("label"), str) and v["label"] in at:
            by_emotion.setdefault(v["label"], []).append((-(num(v.get("score")) or 0.0), i))
    chosen = sorted((s, i, e) for e, lst in by_emotion.items() for s, i in lst)[: opts.max_map_features]
    rank: dict[str, int] = {}
    count = {e: sum(1 for _, _, e2 in chosen if e2 == e) for e in by_emotion}
    out = []
    for s, i, e in chosen:
        j = rank.get(e, 0)
        rank[e] = j + 1
        r = math.sqrt((j + 0.5) / max(count[e], 1))
        a = j * 2.39996323
        x0, y0 = at[e]
        out.append([i, sig(x0 + spread_x * r * math.cos(a), 5), sig(y0 + spread_y * r * math.sin(a), 5), -s])
    return out


def emotions_data(run: RunData, opts: Options) -> dict:
    aligned = run.labels.get("aligned") or {}
    out = []
    for name, ranked in sorted(_emotions(run).items()):
        feats = [{"feature": r.get("feature") if isinstance(r.get("feature"), int) else None,
                  "auroc": num(r.get("auroc")), "heldout_auroc": num(r.get("heldout_auroc")),
                  "ci": [num(c) for c in r["ci"][:2]] if isinstance(r.get("ci"), list) else None,
                  "precision_at_k": num(r.get("precision_at_k"))} for r in ranked[:50]]
        al = [{"feature": r.get("feature") if isinstance(r.get("feature"), int) else None, "cos": num(r.get("cos"))}
              for r in (aligned.get(name) or [])[:20] if isinstance(r, dict)]
        out.append({"name": name, "features": feats, "aligned": al})
    emap = map_points(run.geometry)
    if emap is not None:
        emap["features"] = _place_features(emap, run, opts)
    geo_summary = {k: bounded(v, 2, 20) for k, v in (run.geometry or {}).items()
                   if isinstance(v, (int, float, str, bool)) or k in ("dropped", "missing", "n")}
    return {"emotions": out, "map": emap, "geometry": geo_summary, "has_map_png": "emotion_map.png" in run.images,
            "null": bounded(run.labels.get("null")), "heldout": bounded(run.labels.get("heldout")),
            "settings": bounded(run.labels.get("settings")), "corpus": bounded(run.labels.get("corpus"))}


# --- run page --------------------------------------------------------------------------------

def run_data(run: RunData) -> dict:
    metrics = run.metrics if isinstance(run.metrics, dict) else {}
    scalars = {k: bounded(v) for k, v in metrics.items() if k != "history"}
    history = [h for h in (metrics.get("history") or []) if isinstance(h, dict)]
    if len(history) > 400:  # keep the curve's shape, bound its weight
        step = len(history) / 400
        history = [history[int(j * step)] for j in range(400)] + [history[-1]]
    hist_cols: dict[str, list] = {}
    for key in ("step", "tokens", "loss", "fve", "l0", "dead", "lr"):
        col = [num(h.get(key), 5) for h in history]
        if any(v is not None for v in col):
            hist_cols[key] = col
    return {"name": run.name, "config": _text(run.config_text, 200_000) if run.config_text else None,
            "metrics": scalars, "history": hist_cols, "images": sorted(run.images),
            "sae": bounded(run.sae_cfg), "stats_meta": bounded(run.meta), "vectors": bounded(run.vectors_info),
            "labels": {"corpus": bounded(run.labels.get("corpus")), "settings": bounded(run.labels.get("settings")),
                       "heldout": bounded(run.labels.get("heldout")), "null": bounded(run.labels.get("null"))}}


def site_info(run: RunData, opts: Options, mode: str, live: dict | None) -> dict:
    return {"version": 1, "name": run.name, "mode": mode, "n": run.d_sae, "block": opts.block_size,
            "n_blocks": n_blocks(run, opts), "has_stats": run.has_stats, "hook": run.hook,
            "align_emotions": run.alignment_emotions, "live": live,
            "window": run.meta.get("window"), "quantile_bins": run.meta.get("quantile_bins")}
