"""`emosae label RUN`: which SAE features track which emotions, scored against ground truth.

1. Every passage of the corpus (train and held-out) gets a score per feature: the mean (default;
   `--reduce max` for the max) over its tokens kept by THE position mask and the `skip_tokens` rule (labeling.scoring; one forward,
   cached in RUN/labeling/ and shared with `emosae stats`).
2. On the train split, for each emotion vs the rest (neutral included, its near-synonym cluster
   left out of the negatives): AUROC and precision@k (k = the emotion's number of positives)
   of every feature. Each emotion ranks its features by AUROC (ties: precision@k); the first is
   its chosen feature (used by `--eval` and the monitor).
3. A shuffled-label null: the train labels are permuted and step 2 re-run, so a reader sees how
   high the best of d_sae features gets by chance, and what held-out AUROC features chosen on
   noise reach.
4. Every feature gets a label: its best emotion, if that AUROC beats the 95th percentile of the
   null's best-of-all-features AUROC (a family-wise bar), else none; with its top passages.
5. The held-out topics are scored automatically with the features chosen on train: per emotion
   AUROC with a stratified bootstrap CI, how many emotions reach 0.9, the macro AUROC.
Written to RUN/labels.json (docs/formats.md); keys written by other stages (`aligned`) are kept."""

from __future__ import annotations

import argparse
import difflib
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from labeling.aurocs import (RankedScores, auroc, bootstrap_auroc, ci, emotions_of, precision_at_k,
                             split_masks, summarize)
from labeling.corpus import NEUTRAL, load_corpus, topics
from labeling.scoring import DEFAULT_SKIP, load_run, passage_tokens, reduce_tokens, texts_hash
from sae.errors import UserError
from sae.io import read_json, write_json_atomic
from sae.layout import CFG_FILE, FINGERPRINT_KEY, check_fingerprint, find_sae_dir, run_root, sae_fingerprint

log = logging.getLogger("emosae")
LABELS = "labels.json"


@dataclass
class LabelSettings:
    skip_tokens: int = DEFAULT_SKIP
    reduce: str = "mean"  # the emotion vectors' rule; measured: held-out 7/30 >= 0.9, macro 0.828 vs max's 3/30, 0.742
    top_features: int = 10  # ranked features listed per emotion
    n_boot: int = 1000
    n_null: int = 20
    seed: int = 0
    evidence: int = 5  # top passages stored for a labeled feature (3, shortened, for the rest)
    threshold: float = 0.9  # held-out AUROC counted as a pass


def corpus_rows(corpus: str | Path | None) -> list[dict]:
    rows = load_corpus(corpus)
    if not rows:
        raise UserError(f"corpus {corpus or 'shipped'} holds no rows")
    return rows


def score_rows(run_dir: str | Path, rows: list[dict], settings: LabelSettings, lm=None, model: str | None = None,
               device: str | None = None):
    """(passage scores [n, d_sae] float32, context) for `rows`, one cached forward."""
    lm, sae, hook, outlier_mult = load_run(run_dir, model, device, lm)
    pt = passage_tokens(lm, [r["text"] for r in rows], hook, outlier_mult, cache_dir=run_root(run_dir) / "labeling")
    scores = reduce_tokens(pt, sae, settings.skip_tokens, settings.reduce).numpy()
    return scores, {"lm": lm, "sae": sae, "hook": hook, "outlier_mult": outlier_mult}


def rank_features(rs: RankedScores, labels: np.ndarray, emos: list[str]) -> np.ndarray:
    """[n_emotions, d] train AUROC of every feature for every emotion."""
    out = np.empty((len(emos), rs.scores.shape[1]))
    for i, e in enumerate(emos):
        pos, neg, excl = split_masks(labels, e)
        out[i] = rs.auroc(pos, excl)
    return out


def _choose(A: np.ndarray, P: np.ndarray | None, top: int) -> np.ndarray:
    """[n_emotions, top] feature ids ranked by AUROC (ties by precision@k)."""
    key = A + (1e-6 * P if P is not None else 0)
    return np.argsort(-key, axis=1, kind="stable")[:, :top]


def _heldout_auroc(scores: np.ndarray, labels: np.ndarray, emotion: str, feats) -> np.ndarray:
    pos, neg, _ = split_masks(labels, emotion)
    if not pos.any() or not neg.any():
        return np.full(len(feats), np.nan)
    return auroc(scores[pos][:, feats], scores[neg][:, feats])


def shuffled_null(rs: RankedScores, labels: np.ndarray, emos: list[str], held_scores: np.ndarray | None,
                  held_labels: np.ndarray | None, n_perm: int, seed: int, threshold: float) -> dict:
    """Permute train labels; record the best AUROC any feature reaches per emotion and how the
    features chosen on noise fare on the held-out topics."""
    rng = np.random.default_rng(seed + 1)
    best, held_macro, held_n = [], [], []
    for _ in range(n_perm):
        perm = rng.permutation(labels)
        A = rank_features(rs, perm, emos)
        best.append(np.nanmax(A, axis=1))
        if held_scores is not None:
            chosen = np.nanargmax(A, axis=1)
            h = np.array([_heldout_auroc(held_scores, held_labels, e, [chosen[i]])[0] for i, e in enumerate(emos)])
            held_macro.append(float(np.nanmean(h)))
            held_n.append(int(np.nansum(h >= threshold)))
    best = np.array(best) if best else np.zeros((0, len(emos)))
    out = {"n_perm": n_perm, "method": "train labels permuted across passages; features re-ranked per emotion",
           "train_best_auroc_mean": round(float(best.mean()), 4) if best.size else None,
           "train_best_auroc_p95": round(float(np.quantile(best.max(1) if best.ndim == 2 else best, 0.95)), 4)
           if best.size else None,
           "train_best_auroc_per_emotion_p95": round(float(np.quantile(best, 0.95)), 4) if best.size else None}
    if held_macro:
        out.update({"heldout_macro_auroc_mean": round(float(np.mean(held_macro)), 4),
                    "heldout_macro_auroc_p95": round(float(np.quantile(held_macro, 0.95)), 4),
                    "heldout_n_at_threshold_mean": round(float(np.mean(held_n)), 2),
                    "heldout_n_at_threshold_max": int(np.max(held_n))})
    return out


def dictionary_ceiling(held_S: np.ndarray, held_y: np.ndarray, emos: list[str], threshold: float) -> dict:
    """The best held-out AUROC any single feature reaches per emotion, found by looking at the
    held-out labels themselves. Not a result (it peeks): the bound no selection rule can beat with
    this dictionary, so a reader can tell a weak labeler (chosen << ceiling) from a dictionary that
    lacks the features (ceiling below the threshold)."""
    rs = RankedScores(held_S)
    per = {}
    for e in emos:
        pos, _, excl = split_masks(held_y, e)
        a = rs.auroc(pos, excl)
        f = int(np.nanargmax(a))
        per[e] = {"feature": f, "auroc": round(float(a[f]), 4)}
    vals = np.array([v["auroc"] for v in per.values()])
    return {"n_at_threshold": int((vals >= threshold).sum()), "macro_auroc": round(float(vals.mean()), 4),
            "per_emotion": per, "method": "per emotion, the max over all features of the held-out AUROC "
                                          "(selected on held-out: an upper bound, not a score)"}


def _evidence(scores: np.ndarray, rows: list[dict], idx: np.ndarray, feat: int, n: int, full: bool) -> list[dict]:
    col = scores[idx, feat]
    order = np.argsort(-col, kind="stable")[:n]
    out = []
    for o in order:
        if col[o] <= 0:
            break
        r = rows[idx[o]]
        text = r["text"] if full else (r["text"][:200] + ("..." if len(r["text"]) > 200 else ""))
        out.append({"text": text, "emotion": r["emotion"], "act": round(float(col[o]), 4), "row": int(idx[o])})
    return out


def label_run(run_dir: str | Path, corpus: str | Path | None = None, settings: LabelSettings | None = None,
              lm=None, model: str | None = None, device: str | None = None) -> dict:
    """Label every feature of the run, score the held-out topics, write RUN/labels.json.

    Returns a summary: labeled features, per-emotion chosen features with train and held-out
    AUROC (CI), how many emotions reach the threshold on held-out text, macro AUROC, the null."""
    settings = settings or LabelSettings()
    t0 = time.time()
    rows = corpus_rows(corpus)
    scores, ctx = score_rows(run_dir, rows, settings, lm, model, device)
    labels_all = np.array([r["emotion"] for r in rows])
    split = np.array([r.get("split", "train") for r in rows])
    tr = np.nonzero(split == "train")[0]
    he = np.nonzero(split == "heldout")[0]
    if len(tr) == 0:
        raise UserError("the corpus has no train rows (split == 'train'); label needs some")
    y = labels_all[tr]
    emos = emotions_of(y)
    if not emos:
        raise UserError("the corpus has no emotion rows (only neutral); add rows with an emotion")
    S = scores[tr]
    rs = RankedScores(S)
    A = rank_features(rs, y, emos)  # [E, d]
    P = np.stack([precision_at_k(S, *split_masks(y, e)[:2], int((y == e).sum())) for e in emos])
    d = S.shape[1]
    top = min(settings.top_features, d)
    chosen = _choose(A, P, top)
    held_S, held_y = (scores[he], labels_all[he]) if len(he) else (None, None)
    null = shuffled_null(rs, y, emos, held_S, held_y, settings.n_null, settings.seed, settings.threshold)
    bar = null["train_best_auroc_p95"] if settings.n_null else 0.5
    if not settings.n_null:
        log.warning("no shuffled-label null (n_null 0): every feature whose best train AUROC beats 0.5 gets a label")
    rng = np.random.default_rng(settings.seed)

    emotions_out: dict[str, list] = {}
    held_per: dict[str, dict] = {}
    for i, e in enumerate(emos):
        pos, neg, _ = split_masks(y, e)
        feats = chosen[i]
        boots = bootstrap_auroc(S[pos][:, feats], S[neg][:, feats], settings.n_boot, rng)
        h = _heldout_auroc(held_S, held_y, e, feats) if held_S is not None else np.full(len(feats), np.nan)
        hb = None
        if held_S is not None:
            hpos, hneg, _ = split_masks(held_y, e)
            if hpos.any() and hneg.any():
                hb = bootstrap_auroc(held_S[hpos][:, feats], held_S[hneg][:, feats], settings.n_boot, rng)
        entries = []
        for j, f in enumerate(feats):
            entries.append({"feature": int(f), "auroc": round(float(A[i, f]), 4),
                            "heldout_auroc": None if np.isnan(h[j]) else round(float(h[j]), 4),
                            "ci": ci(boots[:, j]), "heldout_ci": ci(hb[:, j]) if hb is not None else None,
                            "precision_at_k": round(float(P[i, f]), 4)})
        emotions_out[e] = entries
        if entries[0]["heldout_auroc"] is not None:
            hpos, hneg, _ = split_masks(held_y, e)
            held_per[e] = {"feature": entries[0]["feature"], "auroc": entries[0]["heldout_auroc"],
                           "ci": entries[0]["heldout_ci"], "n_pos": int(hpos.sum()), "n_neg": int(hneg.sum())}

    # every feature: its best emotion, labeled when it clears the null's family-wise bar
    best_e = np.nanargmax(np.nan_to_num(A, nan=-1), axis=0)
    best_a = A[best_e, np.arange(d)]
    features_out = {}
    for f in range(d):
        e = emos[best_e[f]]
        labeled = bool(best_a[f] > bar)
        features_out[str(f)] = {"label": e if labeled else None, "score": round(float(P[best_e[f], f]), 4),
                                "auroc": round(float(best_a[f]), 4), "best_emotion": e,
                                "evidence": _evidence(scores, rows, tr, f, settings.evidence if labeled else 3, labeled)}
    heldout = summarize(held_per, settings.threshold) if held_per else None
    if heldout is not None:
        heldout["topics"] = sorted({rows[i].get("topic", "") for i in he})
        heldout["ceiling"] = dictionary_ceiling(held_S, held_y, list(held_per), settings.threshold)
    corpus_info = {"path": str(Path(corpus).resolve()) if corpus else "shipped",
                   "sha256": texts_hash([r["text"] for r in rows]), "n_rows": len(rows), "n_train": int(len(tr)),
                   "n_heldout": int(len(he)), "emotions": emos, "n_neutral_train": int((y == NEUTRAL).sum())}
    if corpus is None:
        corpus_info["heldout_topics"] = topics()[1]
    settings_out = {**asdict(settings), "hook": ctx["hook"], "outlier_mult": ctx["outlier_mult"],
                    "score": f"{settings.reduce} over unmasked tokens at positions >= skip_tokens",
                    "precision_k": "number of positives of the emotion", "label_bar": bar,
                    "label_rule": "best emotion's train AUROC > null p95 of best-of-all-features AUROC",
                    "negatives": "all other rows incl. neutral, minus the emotion's cluster mates",
                    "model_id": ctx["lm"].model_id, "d_sae": d}
    out_path = labels_path(run_dir)
    fingerprint = sae_fingerprint(find_sae_dir(run_dir))
    try:
        doc = read_json(out_path) if out_path.exists() else {}
    except UserError:
        doc = {}  # damaged: this run rewrites all of it but the alignments (`emosae vectors --run`)
    if not isinstance(doc, dict) or doc.get(FINGERPRINT_KEY, fingerprint) != fingerprint:
        doc = {}  # made from other weights: its alignments name other features too
    doc.update({FINGERPRINT_KEY: fingerprint, "corpus": corpus_info, "settings": settings_out,
                "features": features_out, "emotions": emotions_out, "null": null, "heldout": heldout})
    doc.setdefault("aligned", {})
    write_json_atomic(out_path, doc, indent=None)
    n_labeled = sum(v["label"] is not None for v in features_out.values())
    summary = {"labels": str(out_path), "n_features": d, "n_labeled_features": n_labeled,
               "n_emotions": len(emos), "emotions_with_labeled_feature": sorted(
                   {v["label"] for v in features_out.values() if v["label"]}),
               "train_macro_auroc": round(float(np.mean([emotions_out[e][0]["auroc"] for e in emos])), 4),
               "heldout": heldout, "null": null, "label_bar": bar, "seconds": round(time.time() - t0, 2)}
    log.info("labeled %d/%d features; held-out: %s/%d emotions >= %.2f AUROC, macro %s (%.1fs)", n_labeled, d,
             heldout["n_at_threshold"] if heldout else "-", len(emos), settings.threshold,
             heldout["macro_auroc"] if heldout else "-", summary["seconds"])
    return summary


def labels_path(run_dir: str | Path) -> Path:
    """RUN/labels.json, also when given RUN/sae (sae.layout.run_root)."""
    return run_root(run_dir) / LABELS


def read_labels(run_dir: str | Path) -> dict:
    path = labels_path(run_dir)
    if not path.exists():
        raise UserError(f"no {LABELS} in {run_dir}; run `emosae label {run_dir}` first")
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise UserError(f"{path} is not a JSON object; re-run `emosae label {run_root(run_dir)}`")
    return doc


def chosen_features(labels_doc: dict) -> dict[str, int]:
    """{emotion: chosen feature id} from labels.json (the first of each emotion's ranking)."""
    return {e: int(v[0]["feature"]) for e, v in (labels_doc.get("emotions") or {}).items() if v}


def check_labels_fit(doc: dict, run_dir: str | Path) -> None:
    """labels.json must belong to this SAE: a labels file from another SAE (copied, or the run
    retrained) would index past its features (a traceback) or, worse, read the wrong ones. The
    weights' fingerprint catches an SAE of the same width too. Reads files only, so it runs before
    the model loads."""
    sae_dir = find_sae_dir(run_dir)
    d_sae = int(read_json(sae_dir / CFG_FILE)["d_sae"])
    made_for = (doc.get("settings") or {}).get("d_sae")
    too_big = [f for f in chosen_features(doc).values() if not 0 <= f < d_sae]
    fix = f"re-run `emosae label {run_dir}`"
    if (made_for is not None and made_for != d_sae) or too_big:
        what = f"an SAE with {made_for} features" if made_for is not None else f"feature {too_big[0]}"
        raise UserError(f"{labels_path(run_dir)} was made for {what}, but this SAE has {d_sae}; {fix}")
    check_fingerprint(doc.get(FINGERPRINT_KEY), sae_dir, labels_path(run_dir), fix)


def eval_file(run_dir: str | Path, path: str | Path, lm=None, model: str | None = None,
              device: str | None = None) -> dict:
    """Score a user file ({text, emotion}; `neutral` allowed) with the features chosen on the
    training corpus: {"per_emotion": {e: {"feature", "auroc", "n_pos", "n_neg"}}, "macro_auroc",
    "unknown_emotions"}. AUROC is null for an emotion without negatives in the file. Rows of an
    emotion the run has no label for are listed, and count as negatives for the others (an emotion
    the corpus lacks is still not happy); one that looks like a typo of a labeled emotion is warned
    about, since its rows then count against the emotion it meant."""
    doc = read_labels(run_dir)
    chosen = chosen_features(doc)
    if not chosen:
        raise UserError(f"{labels_path(run_dir)} holds no emotion labels; run `emosae label {run_dir}` first")
    check_labels_fit(doc, run_dir)
    st = doc.get("settings") or {}
    settings = LabelSettings(skip_tokens=int(st.get("skip_tokens", DEFAULT_SKIP)), reduce=st.get("reduce", "max"))
    rows = load_corpus(path)
    labels = np.array([r["emotion"] for r in rows])
    present = emotions_of(labels)
    unknown = [e for e in present if e not in chosen]
    known = [e for e in present if e in chosen]
    for e in unknown:
        near = difflib.get_close_matches(e, list(chosen), n=1, cutoff=0.8)
        if near:
            log.warning("label --eval: %r is not an emotion this run labels, so its %d row(s) count as negatives "
                        "for %r too; did you mean %r?", e, int((labels == e).sum()), near[0], near[0])
    per: dict[str, dict] = {}
    if known:
        scores, _ = score_rows(run_dir, rows, settings, lm, model, device)
        for e in known:
            pos, neg, _ = split_masks(labels, e)
            f = chosen[e]
            a = auroc(scores[pos][:, [f]], scores[neg][:, [f]])[0] if neg.any() else np.nan
            per[e] = {"feature": f, "auroc": None if np.isnan(a) else round(float(a), 4),
                      "n_pos": int(pos.sum()), "n_neg": int(neg.sum())}
    vals = [v["auroc"] for v in per.values() if v["auroc"] is not None]
    return {"per_emotion": per, "macro_auroc": round(float(np.mean(vals)), 4) if vals else None,
            "unknown_emotions": unknown}


def score_choice(run_dir: str | Path, choice: dict[str, int], split: str = "heldout", corpus=None, lm=None,
                 n_boot: int = 1000, seed: int = 0, threshold: float = 0.9) -> dict:
    """Held-out (or train) AUROC with CIs of any {emotion: feature} choice, e.g. the features best
    aligned with the emotion vectors, scored exactly like the labels."""
    from labeling.aurocs import emotion_aurocs

    doc = read_labels(run_dir) if labels_path(run_dir).exists() else {}
    st = doc.get("settings") or {}
    settings = LabelSettings(skip_tokens=int(st.get("skip_tokens", DEFAULT_SKIP)), reduce=st.get("reduce", "max"))
    rows = corpus_rows(corpus)
    scores, _ = score_rows(run_dir, rows, settings, lm)
    idx = np.array([i for i, r in enumerate(rows) if r.get("split", "train") == split])
    if len(idx) == 0:
        raise UserError(f"the corpus has no {split!r} rows")
    out = emotion_aurocs({e: scores[idx, f] for e, f in choice.items()}, [rows[i]["emotion"] for i in idx],
                         n_boot, seed, threshold)
    for e, f in choice.items():
        if e in out["per_emotion"]:
            out["per_emotion"][e]["feature"] = int(f)
    return out


# --- command line ------------------------------------------------------------------------------------

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("label", help="label SAE features with emotions, scored against the labeled corpus")
    p.add_argument("run", help="run directory (or any SAELens SAE directory; labels.json goes there)")
    p.add_argument("--corpus", default=None, help="JSONL with text, emotion[, topic, split] (default: shipped corpus)")
    p.add_argument("--eval", default=None, metavar="FILE",
                   help="score FILE (text, emotion) with the features already chosen; prints per-emotion AUROC")
    # labeling options default to None so that `--eval` can tell a typed one (which it cannot honour) from none
    p.add_argument("--skip-tokens", type=int, default=None, help=f"drop positions < N of each passage (default {DEFAULT_SKIP})")
    p.add_argument("--reduce", default=None, choices=("max", "mean"),
                   help="passage score: mean (default, the emotion vectors' rule) or max of a feature over the kept tokens")
    p.add_argument("--n-boot", type=int, default=None, help="bootstrap resamples for CIs (default 1000)")
    p.add_argument("--n-null", type=int, default=None, help="label shuffles for the null (default 20)")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--model", default=None, help="override the model named in the SAE's metadata")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.set_defaults(func=_cli)


# the labeling options (LabelSettings fields) the CLI takes; --eval refuses them (it uses labels.json's)
SETTING_FLAGS = ("skip_tokens", "reduce", "n_boot", "n_null", "seed")


def _cli(args: argparse.Namespace) -> int:
    from sae.cli import flags, print_json, typed

    if any(v is not None and v < 0 for v in (args.skip_tokens, args.n_boot, args.n_null)):
        raise UserError("--skip-tokens, --n-boot and --n-null must be >= 0")
    if args.eval:
        # --eval scores with the features, skip rule and reduce labels.json was made with; these
        # options only shape a new labeling, so typing them with --eval would be silently ignored
        given = flags(typed(args, "corpus", *SETTING_FLAGS))
        if given:
            raise UserError(f"{', '.join(given)} cannot be used with --eval, which scores with the settings "
                            f"labels.json was made with; drop them, or relabel first (`emosae label {args.run} "
                            f"{' '.join(given)} ...`)")
        res = eval_file(args.run, args.eval, model=args.model, device=args.device)
        if args.json:
            print_json(res)
        else:
            for e, v in res["per_emotion"].items():
                a = "n/a" if v["auroc"] is None else f"{v['auroc']:.3f}"
                print(f"{e:14s} feature {v['feature']:6d}  AUROC {a}  ({v['n_pos']} pos / {v['n_neg']} neg)")
            print(f"macro AUROC: {res['macro_auroc']}")
            if res["unknown_emotions"]:
                print(f"no label for: {', '.join(res['unknown_emotions'])}")
        return 0
    settings = LabelSettings(**typed(args, *SETTING_FLAGS))
    summary = label_run(args.run, args.corpus, settings, model=args.model, device=args.device)
    if args.json:
        print_json(summary)
        return 0
    doc = read_labels(args.run)
    held = summary["heldout"]
    print(f"{'emotion':14s} {'feature':>7s} {'train':>6s} {'held-out':>8s}  95% CI")
    for e, entries in doc["emotions"].items():
        b = entries[0]
        h = "   n/a" if b["heldout_auroc"] is None else f"{b['heldout_auroc']:.3f}"
        c = b["heldout_ci"] or ["", ""]
        print(f"{e:14s} {b['feature']:7d} {b['auroc']:6.3f} {h:>8s}  {c}")
    print(f"labeled features: {summary['n_labeled_features']} of {summary['n_features']} "
          f"(bar: train AUROC > {summary['label_bar']})")
    if held:
        print(f"held-out: {held['n_at_threshold']}/{summary['n_emotions']} emotions with AUROC >= {held['threshold']}, "
              f"macro AUROC {held['macro_auroc']}")
        c = held["ceiling"]
        print(f"dictionary ceiling (best single feature per emotion, picked on the held-out labels: a bound, not a "
              f"score): {c['n_at_threshold']}/{len(c['per_emotion'])} >= {held['threshold']}, macro {c['macro_auroc']}")
    n = summary["null"]
    if n.get("heldout_macro_auroc_mean") is not None:
        print(f"shuffled-label null ({n['n_perm']} shuffles): held-out macro AUROC {n['heldout_macro_auroc_mean']} "
              f"(p95 {n['heldout_macro_auroc_p95']}), emotions >= threshold {n['heldout_n_at_threshold_mean']} "
              f"(max {n['heldout_n_at_threshold_max']}); best train AUROC by chance p95 {n['train_best_auroc_p95']}")
    print(f"-> {summary['labels']} ({summary['seconds']:.1f}s)")
    return 0
