"""Geometry of the emotion vectors: PCA, and how well its axes match human affect ratings.

PC1 is correlated (Pearson) with the valence of each emotion word: by default the human-rated
mean valence of the word in the VADER lexicon shipped by `vaderSentiment` (-4..4; 10 raters per
word); words it lacks (afraid, content, awestruck, nostalgic...) are listed and dropped and n is
reported. `--norms FILE.csv` (columns word,valence,arousal: Warriner 2013, NRC-VAD...) adds PC1 vs
its valence and PC2 vs arousal, which VADER cannot give. A principal component's sign is
arbitrary, so each is oriented to correlate positively with its rating (PC1 with valence, PC2 with
arousal when known); |r| is what the orientation cannot change.

When the vectors dir holds the named-emotion control (features.vectors.named_vectors: the same
recipe on sentences that name each emotion), geometry.json's "named" says whether the model has a
valence axis at all (PC1 of the named vectors vs valence) and how the story vectors sit on it."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from sae.errors import UserError
from sae.io import atomic_path, output_dir, write_json_atomic

log = logging.getLogger("emosae")


@dataclass
class Correlation:
    rating: str  # "valence" | "arousal"
    source: str  # "vader" | path of the norms file
    component: int  # 1-based PC
    r: float | None
    p: float | None
    n: int
    missing: list[str]

    def as_dict(self) -> dict:
        return {"rating": self.rating, "source": self.source, "pc": self.component, "r": self.r, "p": self.p,
                "n": self.n, "missing": self.missing}


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r (centred cosine), nan when either side is constant or n < 2."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2 or x.size != y.size:
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    den = np.sqrt((xc @ xc) * (yc @ yc))
    return float(xc @ yc / den) if den > 0 else float("nan")


def pearson_p(r: float, n: int) -> float | None:
    """Two-sided p-value of r under the null of no correlation (t with n-2 dof)."""
    from scipy.stats import t

    if n < 3 or not np.isfinite(r):
        return None
    if abs(r) >= 1:
        return 0.0
    stat = r * np.sqrt((n - 2) / (1 - r * r))
    return float(2 * t.sf(abs(stat), n - 2))


def pca(vectors: np.ndarray, n_components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(scores [n, k], explained variance ratio [k]) of the rows of `vectors`, centred."""
    x = np.asarray(vectors, dtype=np.float64)
    x = x - x.mean(0, keepdims=True)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    var = s ** 2
    k = min(n_components, len(s))
    return u[:, :k] * s[:k], var[:k] / var.sum()


def top_axis(vectors: np.ndarray) -> np.ndarray:
    """The unit direction of PC1 of the rows of `vectors` (centred)."""
    x = np.asarray(vectors, dtype=np.float64)
    return np.linalg.svd(x - x.mean(0, keepdims=True), full_matrices=False)[2][0]


def named_control(emotions: Sequence[str], vectors: np.ndarray, named: np.ndarray, vader: dict[str, float]) -> dict:
    """How the story vectors relate to the model's valence axis for *named* emotions.

    PC1 of the named-emotion vectors is oriented by valence (like PC1 of the stories); then
    `story_on_named_pc1_r` is r of the story vectors' projections on that axis with valence (its
    sign is meaningful: positive means the stories agree with the words), and
    `story_pc1_cosine` is |cos| between the two PC1 directions."""
    named = np.asarray(named, np.float64)
    axis = top_axis(named)
    scores = (named - named.mean(0)) @ axis
    c = correlate(scores, emotions, vader, "valence", "vader", 1)
    if c.r is not None and c.r < 0:
        axis, c.r = -axis, -c.r
    proj = correlate(np.asarray(vectors, np.float64) @ axis, emotions, vader, "valence", "vader", 1)
    return {"pc1_valence_r": c.r, "pc1_valence_p": c.p, "n": c.n,
            "story_on_named_pc1_r": proj.r, "story_on_named_pc1_p": proj.p,
            "story_pc1_cosine": round(float(abs(top_axis(vectors) @ axis)), 5)}


def vader_valence() -> dict[str, float]:
    """Mean human valence (-4..4) of every word in VADER's lexicon, from the installed package."""
    spec = importlib.util.find_spec("vaderSentiment")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("valence ratings need the vaderSentiment package: pip install vaderSentiment")
    path = Path(list(spec.submodule_search_locations)[0]) / "vader_lexicon.txt"
    if not path.exists():
        raise UserError(f"vaderSentiment ships no vader_lexicon.txt at {path}; reinstall vaderSentiment")
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            try:
                out[parts[0].strip().lower()] = float(parts[1])
            except ValueError:
                continue
    return out


def read_norms(path: str | Path) -> dict[str, dict[str, float]]:
    """word -> {"valence", "arousal"} from a CSV with columns word,valence,arousal (any order,
    any case, extra columns ignored; a tab-separated file works too)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"norms file {path} does not exist; give a CSV with columns word,valence,arousal")
    if p.is_dir():
        raise UserError(f"norms file {path} is a folder; give a CSV with columns word,valence,arousal")
    text = p.read_text(encoding="utf-8-sig", errors="replace")
    if not text.strip():
        raise UserError(f"norms file {path} is empty; give a CSV with columns word,valence,arousal")
    dialect = "excel-tab" if "\t" in text.splitlines()[0] and "," not in text.splitlines()[0] else "excel"
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    cols = {c.strip().lower(): c for c in reader.fieldnames or []}
    need = [c for c in ("word", "valence", "arousal") if c not in cols]
    if need:
        raise UserError(f"{path}: missing column(s) {', '.join(need)}; the header must name word,valence,arousal")
    out: dict[str, dict[str, float]] = {}
    for i, row in enumerate(reader, 2):
        word = (row.get(cols["word"]) or "").strip().lower()
        if not word:
            continue
        try:
            out[word] = {"valence": float(row[cols["valence"]]), "arousal": float(row[cols["arousal"]])}
        except (TypeError, ValueError):
            raise UserError(f"{path}:{i}: valence/arousal of {word!r} is not a number") from None
    if not out:
        raise UserError(f"{path} holds no ratings")
    return out


def correlate(scores: np.ndarray, emotions: Sequence[str], ratings: dict[str, float], rating: str, source: str,
              component: int) -> Correlation:
    """Pearson r of one PC with the ratings of the emotion words the ratings know."""
    have = [i for i, e in enumerate(emotions) if e.lower() in ratings]
    missing = [e for e in emotions if e.lower() not in ratings]
    if len(have) < 3:
        return Correlation(rating, source, component, None, None, len(have), missing)
    x = scores[have]
    y = [ratings[emotions[i].lower()] for i in have]
    r = pearson(x, y)
    return Correlation(rating, source, component, None if np.isnan(r) else r, pearson_p(r, len(have)), len(have), missing)


def geometry(emotions: Sequence[str], vectors: np.ndarray, norms: dict[str, dict[str, float]] | None = None,
             norms_source: str | None = None, named: np.ndarray | None = None) -> dict:
    """PCA of the vectors and the correlations; the geometry.json document (without paths).
    `named`: the named-emotion control vectors at the same hook (`named_control`), if any."""
    emotions = list(emotions)
    if len(emotions) < 3:
        raise UserError(f"geometry needs at least 3 emotion vectors, got {len(emotions)}")
    scores, evr = pca(vectors, 2)
    vader = vader_valence()
    corrs = [correlate(scores[:, 0], emotions, vader, "valence", "vader", 1)]
    if norms is not None:
        corrs.append(correlate(scores[:, 0], emotions, {w: v["valence"] for w, v in norms.items()}, "valence",
                               norms_source or "norms", 1))
        corrs.append(correlate(scores[:, 1], emotions, {w: v["arousal"] for w, v in norms.items()}, "arousal",
                               norms_source or "norms", 2))
    # the sign of a PC is arbitrary: orient PC1 by VADER valence, PC2 by arousal (when known)
    v = corrs[0]
    ar = next((c for c in corrs if c.rating == "arousal"), None)
    # where valence lives when it is not PC1: r of VADER valence with each of the first PCs (raw signs)
    more, _ = pca(vectors, 5)
    by_pc = [correlate(more[:, k], emotions, vader, "valence", "vader", k + 1).r for k in range(more.shape[1])]
    # VADER orients PC1 where it rates enough of the words; else the user's valence norms do
    by = next((c for c in corrs if c.rating == "valence" and c.r is not None), v)
    flipped = [by.r is not None and by.r < 0, ar is not None and ar.r is not None and ar.r < 0]
    for pc in (0, 1):
        if flipped[pc]:
            scores[:, pc] *= -1
            for c in corrs:
                if c.component == pc + 1 and c.r is not None:
                    c.r = -c.r
    return {"emotions": emotions, "coords": np.round(scores, 5).tolist(),
            "axes": ["PC1", "PC2"], "explained_variance": [round(float(x), 5) for x in evr],
            "pc1_valence_r": v.r, "pc1_valence_p": v.p, "n": v.n, "valence_missing": v.missing,
            "pc2_arousal_r": ar.r if ar else None, "pc2_arousal_n": ar.n if ar else None,
            "flipped": {"pc1": flipped[0], "pc2": flipped[1]},
            "valence_r_by_pc": [None if r is None else round(r, 4) for r in by_pc],
            "valence": {e: vader.get(e.lower()) for e in emotions},
            "correlations": [c.as_dict() for c in corrs],
            "named": named_control(emotions, vectors, named, vader) if named is not None else None}


def emotion_map(doc: dict, path: str | Path, title: str = "") -> Path:
    """PC1 x PC2 scatter, each point labeled with its emotion and coloured by VADER valence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    xy = np.asarray(doc["coords"])
    val = [doc["valence"].get(e) for e in doc["emotions"]]
    known = np.array([v is not None for v in val])
    fig, ax = plt.subplots(figsize=(7.5, 6))
    if (~known).any():
        ax.scatter(xy[~known, 0], xy[~known, 1], c="0.6", s=28, label="not in VADER")
    if known.any():
        sc = ax.scatter(xy[known, 0], xy[known, 1], c=[v for v in val if v is not None], cmap="coolwarm_r",
                        vmin=-4, vmax=4, s=36)
        fig.colorbar(sc, ax=ax, label="VADER valence (human ratings)")
    for (x, y), e in zip(xy, doc["emotions"]):
        ax.annotate(e, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=8)
    ev = doc["explained_variance"]
    r = doc["pc1_valence_r"]
    ax.set_xlabel(f"PC1 ({ev[0]:.0%} of variance)" + (f"; r with valence = {r:.2f}, n = {doc['n']}" if r is not None else ""))
    ax.set_ylabel(f"PC2 ({ev[1]:.0%})" + (f"; r with arousal = {doc['pc2_arousal_r']:.2f}" if doc.get("pc2_arousal_r") is not None else ""))
    ax.axhline(0, color="0.85", lw=0.8, zorder=0)
    ax.axvline(0, color="0.85", lw=0.8, zorder=0)
    nc = doc.get("named") or {}
    sub = (f"\nnamed-emotion control: its PC1 vs valence r = {nc['pc1_valence_r']:.2f}; these vectors on that axis "
           f"r = {nc['story_on_named_pc1_r']:.2f}" if nc.get("pc1_valence_r") is not None
           and nc.get("story_on_named_pc1_r") is not None else "")
    ax.set_title((title or "Emotion vectors, PCA") + sub, fontsize=10 if sub else None)
    if (~known).any():
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def run_geometry(source: str | Path, layer: int | None = None, norms: str | Path | None = None,
                 out: str | Path | None = None) -> dict:
    """Geometry of the vectors in a run (at the SAE's layer, else the best layer) or a vectors dir
    (its best layer); writes geometry.json and emotion_map.png into `out` (default: the run or
    vectors dir)."""
    from features.vectors import load_named, load_vector_set

    from sae.layout import root_or_path

    src = root_or_path(Path(source).expanduser())  # RUN/sae's vectors/ are in RUN; a vectors dir as is
    if not src.exists():
        raise UserError(f"{source} does not exist; give a run directory or a vectors directory")
    emotions, tensors, info = load_vector_set(src)
    key = _pick_key(src, tensors, info, layer)
    named = load_named(src, key, emotions)
    doc = geometry(emotions, tensors[key].numpy(), read_norms(norms) if norms else None, str(norms) if norms else None,
                   named.numpy() if named is not None else None)
    out_dir = Path(out) if out else src
    doc = {"source": str(src), "vectors": key, **doc}
    png = emotion_map(doc, out_dir / "emotion_map.png", f"Emotion vectors at {key}")
    doc["png"] = str(png)
    write_json_atomic(out_dir / "geometry.json", doc)
    return doc


def _pick_key(src: Path, tensors: dict, info: dict, layer: int | None) -> str:
    if layer is not None:
        key = f"layer_{layer}"
        if key not in tensors:
            raise UserError(f"no vectors at layer {layer} in {src} (have {sorted(tensors)})")
        return key
    from sae.layout import CFG_FILE

    for cand in (src / "sae" / CFG_FILE, src / CFG_FILE):
        if cand.exists():  # a run: the SAE's own hook
            import json

            from features.vectors import vector_key

            meta = json.loads(cand.read_text()).get("metadata") or {}
            hook = meta.get("hook_name", "")
            try:
                key = vector_key(hook)
            except ValueError:
                import re

                m = re.fullmatch(r"[\w.]*layers\.(\d+)", hook)
                key = f"layer_{m.group(1)}" if m else ""
            if key in tensors:
                return key
            log.warning("geometry: no vectors at the SAE's hook %s; using the best layer", hook)
    best = info.get("best_layer")
    if best is not None and f"layer_{best}" in tensors:
        return f"layer_{best}"
    if len(tensors) == 1:
        return next(iter(tensors))
    raise UserError(f"{src} holds vectors at several layers and names no best one; pass --layer L")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("geometry", help="PCA of emotion vectors; PC1 vs human valence (and PC2 vs arousal)")
    p.add_argument("source", metavar="RUN|VECTORS_DIR")
    p.add_argument("--norms", default=None, help="CSV with columns word,valence,arousal (adds PC2 vs arousal)")
    p.add_argument("--layer", type=int, default=None, help="layer of the vectors (default: the SAE's, else the best)")
    p.add_argument("--out", default=None, help="where geometry.json and emotion_map.png go (default: the source dir)")
    p.add_argument("--json", action="store_true", help="print geometry.json on stdout")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    from sae.cli import print_json

    output_dir(args.out)
    doc = run_geometry(args.source, args.layer, args.norms, args.out)
    for c in doc["correlations"] if args.json else []:
        if c["missing"]:
            log.info("geometry: %s (%s) lacks %d emotion word(s), dropped: %s", c["source"], c["rating"],
                     len(c["missing"]), ", ".join(c["missing"]))
    if args.json:
        print_json(doc)
        return 0
    ev = doc["explained_variance"]
    print(f"emotion vectors {doc['vectors']} from {doc['source']}: {len(doc['emotions'])} emotions; "
          f"PC1 {ev[0]:.1%}, PC2 {ev[1]:.1%} of variance")
    for c in doc["correlations"]:
        r = "n/a" if c["r"] is None else f"{c['r']:+.3f}"
        p = "" if c["p"] is None else f" (p = {c['p']:.2g})"
        print(f"PC{c['pc']} vs {c['rating']} ({c['source']}): r = {r}{p}, n = {c['n']}"
              + (f"; dropped: {', '.join(c['missing'])}" if c["missing"] else ""))
    print("VADER valence r with PC1..PC{}: {}".format(len(doc["valence_r_by_pc"]), ", ".join(
        "n/a" if r is None else f"{r:+.2f}" for r in doc["valence_r_by_pc"])) + " (raw PC signs)")
    nc = doc.get("named")
    if nc:
        f = lambda r: "n/a" if r is None else f"{r:+.3f}"  # noqa: E731
        print(f"named-emotion control: PC1 of the named vectors vs valence r = {f(nc['pc1_valence_r'])}, "
              f"story vectors on that axis r = {f(nc['story_on_named_pc1_r'])} (n = {nc['n']}); "
              f"|cos| of the two PC1s {nc['story_pc1_cosine']:.2f}")
    print(f"wrote {Path(doc['png']).parent / 'geometry.json'} and {doc['png']}")
    return 0
