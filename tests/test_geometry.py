"""Geometry: Pearson r and PCA checked against scipy/numpy on known inputs; VADER valence from the
installed lexicon; the CLI on a vectors directory (geometry.json, PNG, --norms)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from scipy.stats import pearsonr

from labeling.geometry import geometry, pca, pearson, pearson_p, read_norms, vader_valence
from sae.errors import UserError

EMOS = ["happy", "sad", "afraid", "calm", "angry", "content", "proud", "lonely", "awestruck", "nostalgic"]


def test_pearson_matches_scipy():
    rng = np.random.default_rng(0)
    for n in (3, 7, 30):
        x = rng.normal(size=n)
        y = 0.6 * x + rng.normal(size=n)
        ref = pearsonr(x, y)
        assert pearson(x, y) == pytest.approx(ref.statistic, abs=1e-12)
        assert pearson_p(pearson(x, y), n) == pytest.approx(ref.pvalue, rel=1e-6)
    x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    y = [2.0, 1.0, 4.0, 3.0, 6.0, 5.0]
    assert pearson(x, y) == pytest.approx(pearsonr(x, y).statistic)  # 0.8286
    assert np.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_pca_matches_eigendecomposition():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 5)) @ np.diag([5, 3, 1, 0.5, 0.1])
    scores, evr = pca(x, 2)
    xc = x - x.mean(0)
    evals, evecs = np.linalg.eigh(np.cov(xc.T))
    order = np.argsort(evals)[::-1]
    assert evr == pytest.approx(evals[order][:2] / evals.sum())
    for k in range(2):  # same component up to sign
        ref = xc @ evecs[:, order[k]]
        assert abs(pearson(scores[:, k], ref)) == pytest.approx(1.0)


def test_vader_lexicon_values():
    v = vader_valence()
    assert v["happy"] == pytest.approx(2.7) and v["terrified"] == pytest.approx(-3.0)
    for missing in ("afraid", "content", "awestruck", "nostalgic"):
        assert missing not in v


def _vectors(valence_axis_sign: float = -1.0, seed: int = 0) -> np.ndarray:
    """Vectors whose main axis is VADER valence (missing words get 0) plus noise on 30 dims."""
    rng = np.random.default_rng(seed)
    v = vader_valence()
    axis = rng.normal(size=30)
    axis /= np.linalg.norm(axis)
    other = rng.normal(size=30)
    other -= other @ axis * axis
    other /= np.linalg.norm(other)
    out = np.stack([valence_axis_sign * v.get(e, 0.0) * axis + rng.normal() * 0.8 * other + 0.1 * rng.normal(size=30)
                    for e in EMOS])
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_geometry_r_and_missing_words():
    vecs = _vectors(-1.0)
    doc = geometry(EMOS, vecs)
    assert doc["valence_missing"] == ["afraid", "content", "awestruck", "nostalgic"]
    assert doc["n"] == len(EMOS) - 4
    v = vader_valence()
    have = [i for i, e in enumerate(EMOS) if e in v]
    pc1 = np.asarray(doc["coords"])[:, 0]
    ref = pearsonr(pc1[have], [v[EMOS[i]] for i in have]).statistic
    assert doc["pc1_valence_r"] == pytest.approx(ref, abs=1e-4)
    assert doc["pc1_valence_r"] > 0.9  # built on the valence axis; oriented positive
    assert doc["flipped"]["pc1"] is True  # the axis was built with the opposite sign
    assert sum(doc["explained_variance"]) <= 1.0
    assert doc["pc2_arousal_r"] is None
    assert abs(doc["valence_r_by_pc"][0]) == pytest.approx(doc["pc1_valence_r"], abs=1e-3)
    assert len(doc["valence_r_by_pc"]) == 5
    with pytest.raises(UserError):
        geometry(EMOS[:2], vecs[:2])


def _story_and_named(seed: int = 0, story_sign: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Named vectors whose main axis is valence; story vectors whose main axis is something else
    (large, unrelated to valence), with valence only on a minor axis shared with the named ones."""
    rng = np.random.default_rng(seed)
    v = vader_valence()
    q, _ = np.linalg.qr(rng.normal(size=(30, 3)))
    val, other = q[:, 0], q[:, 1]
    vals = np.array([v.get(e, 0.0) for e in EMOS])
    c = rng.normal(size=len(EMOS))
    c -= c.mean()
    vc = vals - vals.mean()
    c -= (c @ vc) / (vc @ vc) * vc  # uncorrelated with valence
    c *= 8.0 / np.linalg.norm(c) * np.sqrt(len(EMOS))
    named = np.stack([x * val + 0.1 * rng.normal(size=30) for x in vals])
    story = np.stack([story_sign * 0.5 * x * val + ci * other + 0.05 * rng.normal(size=30) for x, ci in zip(vals, c)])
    return story, named


def test_named_control():
    from labeling.geometry import top_axis

    story, named = _story_and_named()
    doc = geometry(EMOS, story, named=named)
    nc = doc["named"]
    assert abs(doc["pc1_valence_r"]) < 0.7  # the stories' PC1 is the other axis
    assert nc["pc1_valence_r"] > 0.95 and nc["n"] == doc["n"]
    v = vader_valence()
    have = [i for i, e in enumerate(EMOS) if e in v]
    axis = top_axis(named)
    ref = pearsonr((story @ axis)[have], [v[EMOS[i]] for i in have]).statistic
    assert nc["story_on_named_pc1_r"] == pytest.approx(abs(ref), abs=1e-6) and nc["story_on_named_pc1_r"] > 0.9
    assert nc["story_pc1_cosine"] < 0.3
    # the named axis is oriented by valence, so the sign says whether stories and words agree
    assert geometry(EMOS, story, named=-named)["named"]["story_on_named_pc1_r"] == pytest.approx(-nc["story_on_named_pc1_r"])
    flipped, _ = _story_and_named(story_sign=-1.0)
    assert geometry(EMOS, flipped, named=named)["named"]["story_on_named_pc1_r"] < -0.9
    assert geometry(EMOS, story)["named"] is None


def test_norms_file(tmp_path):
    p = tmp_path / "norms.csv"
    p.write_text("Word,Valence,Arousal,Dominance\nhappy,8.5,6.0,7\nsad,2.1,3.5,3\nafraid,2.0,6.7,2\n"
                 "calm,6.9,1.7,6\nangry,2.5,7.2,5\nlonely,2.3,3.0,3\n")
    norms = read_norms(p)
    assert norms["afraid"] == {"valence": 2.0, "arousal": 6.7}
    doc = geometry(EMOS, _vectors(1.0), norms, str(p))
    ar = [c for c in doc["correlations"] if c["rating"] == "arousal"][0]
    assert ar["n"] == 6 and ar["pc"] == 2 and "proud" in ar["missing"]
    pc2 = np.asarray(doc["coords"])[:, 1]
    idx = [EMOS.index(w) for w in norms]
    assert doc["pc2_arousal_r"] == pytest.approx(pearsonr(pc2[idx], [norms[w]["arousal"] for w in norms]).statistic, abs=1e-4)
    bad = tmp_path / "bad.csv"
    bad.write_text("word,valence\nhappy,8\n")
    with pytest.raises(UserError):
        read_norms(bad)
    bad.write_text("")
    with pytest.raises(UserError, match="empty"):
        read_norms(bad)


def test_norms_orient_pc1_when_vader_rates_too_few_words():
    """Words VADER lacks (n < 3 for it): the user's valence norms orient PC1, so r >= 0 as documented."""
    words = ["zorpish", "blickful", "quuxed", "frobbed", "wuggy", "snarfed"]
    valence = np.array([8.0, 2.0, 6.5, 1.5, 7.0, 3.0])
    rng = np.random.default_rng(0)
    axis, other = np.linalg.qr(rng.normal(size=(16, 2)))[0].T
    for sign in (1.0, -1.0):
        vecs = np.stack([sign * (v - valence.mean()) * axis + 0.3 * rng.normal() * other for v in valence])
        doc = geometry(words, vecs, {w: {"valence": v, "arousal": 5.0} for w, v in zip(words, valence)}, "norms")
        assert doc["n"] == 0 and doc["pc1_valence_r"] is None
        norms_r = [c for c in doc["correlations"] if c["rating"] == "valence" and c["source"] == "norms"][0]["r"]
        assert norms_r > 0.9


def test_cli_on_a_vectors_dir(tmp_path, capsys):
    from sae.cli import main

    d = tmp_path / "vec"
    d.mkdir()
    save_file({"layer_4": torch.tensor(_vectors(1.0), dtype=torch.float32),
               "layer_7": torch.tensor(_vectors(1.0, seed=3), dtype=torch.float32)},
              str(d / "vectors.safetensors"), metadata={"emotions": json.dumps(EMOS)})
    (d / "vectors.json").write_text(json.dumps({"emotions": EMOS, "layers": [4, 7], "best_layer": 7}))
    assert main(["geometry", str(d), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["vectors"] == "layer_7" and doc["n"] == 6
    assert json.loads((d / "geometry.json").read_text())["pc1_valence_r"] == pytest.approx(doc["pc1_valence_r"])
    assert (d / "emotion_map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["geometry", str(d), "--layer", "4", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "n = 6" in out and "afraid" in out
    assert json.loads((tmp_path / "o" / "geometry.json").read_text())["vectors"] == "layer_4"
    assert doc["named"] is None
    story, named = _story_and_named()
    save_file({"layer_7": torch.tensor(named, dtype=torch.float32)}, str(d / "named_vectors.safetensors"),
              metadata={"emotions": json.dumps(EMOS)})
    save_file({"layer_7": torch.tensor(story, dtype=torch.float32)}, str(d / "vectors.safetensors"),
              metadata={"emotions": json.dumps(EMOS)})
    assert main(["geometry", str(d)]) == 0
    out = capsys.readouterr().out
    assert "named-emotion control" in out
    assert json.loads((d / "geometry.json").read_text())["named"]["pc1_valence_r"] > 0.95
    assert main(["geometry", str(d), "--layer", "9"]) == 2
    assert main(["geometry", str(tmp_path / "nope")]) == 2
