"""Emotion vectors: the recipe on known numbers, then on the embedded model over a small slice of
the shipped corpus (layer 3 keeps the forward short), the CLI with a run (alignment merged into
labels.json)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from features.vectors import (NAMED_FILE, NAMED_TEMPLATES, compute_vectors, load_named, load_vectors, make_vectors,
                              neutral_pcs, parse_layers, vector_key)
from sae.errors import UserError

EMOS = ("happy", "afraid", "calm")
HOOK = "blocks.3.hook_resid_post"


# --- the recipe on known numbers -----------------------------------------------------------------

def test_neutral_pcs_pick_half_the_variance():
    rng = np.random.default_rng(0)
    scales = np.array([10.0, 6.0, 3.0, 1.0, 1.0, 1.0, 0.5, 0.5])
    basis, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    x = (rng.normal(size=(4000, 8)) * scales) @ basis.T + 3.0
    xt = torch.tensor(x)
    pcs = neutral_pcs(xt.T @ xt, xt.sum(0), len(x), 0.5)
    # variances 100, 36, 9, ...: the first PC alone explains ~63% -> one direction
    assert pcs.shape == (8, 1)
    assert abs(float(torch.tensor(basis[:, 0]) @ pcs[:, 0])) > 0.99
    pcs2 = neutral_pcs(xt.T @ xt, xt.sum(0), len(x), 0.8)
    assert pcs2.shape[1] == 2
    assert neutral_pcs(xt.T @ xt, xt.sum(0), len(x), 0.0).shape[1] == 0


def test_make_vectors_is_the_recipe():
    rng = np.random.default_rng(1)
    means = torch.tensor(rng.normal(size=(9, 6)), dtype=torch.float32)
    rows = ["a", "a", "a", "b", "b", "c", "c", "c", "c"]
    pcs = torch.tensor(np.linalg.qr(rng.normal(size=(6, 2)))[0])
    got = make_vectors(means, rows, ["a", "b", "c"], pcs)
    m = np.stack([means.numpy()[np.array(rows) == e].mean(0) for e in "abc"]).astype(np.float64)
    v = m - m.mean(0)
    P = pcs.numpy()
    v = v - v @ P @ P.T
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    np.testing.assert_allclose(got.numpy(), v, atol=1e-6)
    assert torch.allclose(got.norm(dim=1), torch.ones(3))
    assert (got.double() @ pcs).abs().max() < 1e-6
    with pytest.raises(UserError):
        make_vectors(means, rows, ["a", "z"], pcs)


def test_parse_layers_and_keys():
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("3,1,1", 30) == [1, 3]
    assert parse_layers("0-29:10", 30) == [0, 10, 20]
    assert parse_layers("5-7", 30) == [5, 6, 7]
    for bad in ("x", "30", "7-5", "1-3:0"):
        with pytest.raises(UserError):
            parse_layers(bad, 30)
    assert vector_key("blocks.12.hook_resid_post") == "layer_12"
    assert vector_key("blocks.12.hook_resid_pre") == "hook_resid_pre_12"


# --- the embedded model on a small slice of the corpus --------------------------------------------

def _rows() -> list[dict]:
    from labeling.corpus import load_corpus, topics

    all_topics, held = topics()
    train_t = [t for t in all_topics if t not in held][:5]
    rows = [r for r in load_corpus() if r["emotion"] in EMOS and r["topic"] in train_t + held[:2]]
    neutral = [r for r in load_corpus() if r["emotion"] == "neutral"]
    rows += [r for r in neutral if r["split"] == "train"][:10] + [r for r in neutral if r["split"] == "heldout"][:4]
    return rows


@pytest.fixture(scope="module")
def rows():
    return _rows()


@pytest.fixture(scope="module")
def result(lm, rows):
    return compute_vectors(lm, [1, 3], rows, n_boot=50)


def test_vectors_on_the_embedded_model(lm, rows, result, tmp_path):
    from labeling.scoring import DEFAULT_SKIP, passage_acts

    assert result.emotions == list(EMOS)
    assert result.hooks == ["blocks.1.hook_resid_post", HOOK]
    assert result.skip_tokens == DEFAULT_SKIP
    for h in result.hooks:
        v = result.vectors[h]
        assert v.shape == (3, 576)
        assert torch.allclose(v.norm(dim=1), torch.ones(3), atol=1e-5)
        assert result.n_pcs[h] >= 1
        held = result.heldout[h]
        assert set(held["per_emotion"]) == set(EMOS)
        assert 0.0 <= held["macro_auroc"] <= 1.0
    # the recipe by hand at layer 3, from labeling.scoring (THE mask + skip rule), agrees
    texts = [r["text"] for r in rows]
    means = passage_acts(lm, None, texts, HOOK, reduce="mean")
    em = np.array([r["emotion"] for r in rows])
    split = np.array([r["split"] for r in rows])
    toks = passage_acts(lm, None, [t for t, e, s in zip(texts, em, split) if e == "neutral" and s == "train"],
                        HOOK, reduce="none")
    x = torch.cat([t.acts[t.keep] for t in toks]).double()
    pcs = neutral_pcs(x.T @ x, x.sum(0), x.shape[0], 0.5)
    assert pcs.shape[1] == result.n_pcs[HOOK]
    tr = np.flatnonzero((split == "train") & (em != "neutral"))
    by_hand = make_vectors(means[torch.from_numpy(tr)], em[tr], list(EMOS), pcs)
    cos = (by_hand * result.vectors[HOOK]).sum(1)
    assert cos.min() > 0.999, cos  # scoring caches activations in float16; the recipe is the same
    # files round-trip
    result.save(tmp_path / "v")
    emotions, by_layer = load_vectors(tmp_path / "v")
    assert emotions == list(EMOS) and sorted(by_layer) == [1, 3]
    assert torch.equal(by_layer[3], result.vectors[HOOK])
    info = json.loads((tmp_path / "v" / "vectors.json").read_text())
    assert info["layers"] == [1, 3] and info["best_layer"] in (1, 3) and info["skip_tokens"] == DEFAULT_SKIP
    assert set(info["heldout_auroc"]) == {"1", "3"}
    best = max((info["heldout_auroc"][k], -int(k)) for k in info["heldout_auroc"])
    assert info["best_layer"] == -best[1]
    assert info["heldout"][str(info["best_layer"])]["per_emotion"]["happy"]["ci"] is not None


def test_named_control_vectors(lm, result, tmp_path):
    """The control: the recipe on sentences naming each emotion, at every hook, saved beside the
    vectors; checked by hand at layer 3 from a plain forward (position 0 masked, no skip)."""
    from sae.hooks import run_to_hooks

    assert set(result.named) == set(result.hooks)
    pcs = {h: neutral_pcs(*_neutral_sums(lm, h), 0.5) for h in [HOOK]}
    means = []
    for e in EMOS:
        enc = lm.tokenizer([t.format(w=e) for t in NAMED_TEMPLATES], add_special_tokens=False)["input_ids"]
        per = []
        for ids in enc:
            with torch.inference_mode():
                a = run_to_hooks(lm.model, [HOOK], input_ids=torch.tensor([ids]))[HOOK][0]
            per.append(a[1:].mean(0))  # THE mask drops position 0; these sentences have no outliers
        means.append(torch.stack(per).mean(0))
    by_hand = make_vectors(torch.stack(means), list(EMOS), list(EMOS), pcs[HOOK])
    v = result.named[HOOK]
    assert v.shape == (3, 576) and torch.allclose(v.norm(dim=1), torch.ones(3), atol=1e-5)
    assert (by_hand * v).sum(1).min() > 0.999
    result.save(tmp_path / "v")
    assert (tmp_path / "v" / NAMED_FILE).exists()
    assert torch.equal(load_named(tmp_path / "v", "layer_3", EMOS), v)
    assert load_named(tmp_path / "v", "layer_9", EMOS) is None
    assert load_named(tmp_path / "v", "layer_3", EMOS[::-1]) is None  # made for another emotion order
    info = json.loads((tmp_path / "v" / "vectors.json").read_text())
    assert info["named_vectors"]["templates"] == list(NAMED_TEMPLATES)
    # without the control, a stale file from an earlier computation is removed
    result.named, named = {}, result.named
    try:
        result.save(tmp_path / "v")
    finally:
        result.named = named
    assert not (tmp_path / "v" / NAMED_FILE).exists() and load_named(tmp_path / "v", "layer_3", EMOS) is None


def _neutral_sums(lm, hook):
    from labeling.scoring import passage_acts

    neutral = [r["text"] for r in _rows() if r["emotion"] == "neutral" and r["split"] == "train"]
    x = torch.cat([t.acts[t.keep] for t in passage_acts(lm, None, neutral, hook, reduce="none")]).double()
    return x.T @ x, x.sum(0), x.shape[0]


def test_cached_path_matches_streamed(lm, rows, result, tmp_path):
    cached = compute_vectors(lm, [], rows, cached_hooks=[HOOK], cache_dir=tmp_path, n_boot=0)
    assert list(tmp_path.glob("passage_acts_*.safetensors"))
    assert cached.hooks == [HOOK]
    assert cached.n_pcs[HOOK] == result.n_pcs[HOOK]
    assert (cached.vectors[HOOK] * result.vectors[HOOK]).sum(1).min() > 0.999


def test_bad_corpus_is_a_user_error(lm, rows):
    with pytest.raises(UserError):
        compute_vectors(lm, [3], [r for r in rows if r["emotion"] in ("happy", "neutral")])
    with pytest.raises(UserError):
        compute_vectors(lm, [40], rows)


def test_cli_with_a_run_merges_alignment(lm, rows, tmp_path, capsys):
    from sae.architectures import SAEConfig, SparseAutoencoder
    from sae.cli import main
    from sae.io import write_json_atomic
    from sae.models import EMBEDDED_ID

    run = tmp_path / "run"
    sae = SparseAutoencoder(SAEConfig(arch="topk", d_in=576, d_sae=96, k=8, hook_name=HOOK,
                                      metadata={"model_id": EMBEDDED_ID}))
    sae.init_weights(torch.Generator().manual_seed(0))
    sae.save(run / "sae")
    write_json_atomic(run / "labels.json", {"corpus": {"path": "x"}, "features": {"0": {"label": None}}})
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["vectors", "--run", str(run), "--corpus", str(corpus), "--top", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["layers"] == [3] and doc["best_layer"] == 3
    labels = json.loads((run / "labels.json").read_text())
    assert labels["features"] == {"0": {"label": None}} and labels["corpus"] == {"path": "x"}  # kept
    assert set(labels["aligned"]) == set(EMOS)
    emotions, by_layer = load_vectors(run)
    dec = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=1, keepdim=True)
    for i, e in enumerate(emotions):
        entries = labels["aligned"][e]
        assert len(entries) == 3
        cos = dec @ by_layer[3][i]
        assert entries[0]["feature"] == int(cos.argmax())
        assert entries[0]["cos"] == pytest.approx(float(cos.max()), abs=1e-4)
        assert [x["cos"] for x in entries] == sorted((x["cos"] for x in entries), reverse=True)
        assert entries[0]["heldout_auroc"] is None or 0 <= entries[0]["heldout_auroc"] <= 1
    assert labels["aligned_summary"]["heldout"]["n_emotions"] == 3
    assert list((run / "labeling").glob("passage_acts_*.safetensors"))  # shared with `emosae label`
    assert main(["vectors", "--layers", "3"]) == 2  # no --out and no --run
    assert main(["vectors", "--run", str(run), "--top", "0"]) == 2  # checked before any work
    assert main(["vectors", "--layers", "3", "--out", str(corpus)]) == 2  # --out is a file
    assert "is a file" in capsys.readouterr().err
