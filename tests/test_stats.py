"""Feature statistics: the streaming accumulator against brute force, and `emosae stats` on a
tiny run of the embedded model (a random TopK SAE at a shallow layer)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from features.stats import Chunk, FeatureStats, StatsConfig, decoder_neighbors


def _synthetic(seed=0, R=12, L=20, d=24, density=0.15):
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, 500, (R, L), generator=g)
    docs = torch.cumsum((torch.rand(R, L, generator=g) < 0.08).long(), 1) + torch.arange(R)[:, None] * 100
    keep = torch.rand(R, L, generator=g) > 0.1
    local = keep.reshape(-1).nonzero().squeeze(1)
    f = torch.rand(local.numel(), d, generator=g) * 5
    f[torch.rand(f.shape, generator=g) > density] = 0
    return rows, docs, local, f


def _feed(rows, docs, local, f, cfg, rows_per_chunk):
    fs = FeatureStats(f.shape[1], cfg)
    L = rows.shape[1]
    row = local // L
    for r0 in range(0, rows.shape[0], rows_per_chunk):
        r1 = r0 + rows_per_chunk
        sel = (row >= r0) & (row < r1)
        fs.update(f[sel], Chunk(torch.zeros(int(sel.sum()), 4), local[sel] - r0 * L, rows[r0:r1], docs[r0:r1], r0))
    return fs.finalize(), fs


def _window_ref(rows, docs, local, f, feat, flat, W):
    L = rows.shape[1]
    r, t = divmod(flat, L)
    dense = torch.zeros(rows.numel())
    dense[local] = f[:, feat]
    toks, acts = [], []
    for o in range(-W, W + 1):
        q = t + o
        if 0 <= q < L and docs[r, q] == docs[r, t]:
            toks.append(int(rows[r, q]))
            acts.append(float(dense[r * L + q]))
        else:
            toks.append(-1)
            acts.append(0.0)
    return toks, acts


def test_accumulator_matches_brute_force():
    rows, docs, local, f = _synthetic()
    cfg = StatsConfig(k=5, window=3, quantile_bins=4, samples_per_bin=2)
    out, fs = _feed(rows, docs, local, f, cfg, rows_per_chunk=5)
    assert torch.allclose(out["max_act"], f.max(0).values)
    assert torch.allclose(out["density"], (f > 0).float().mean(0))
    for feat in range(f.shape[1]):
        col = f[:, feat]
        nz = int((col > 0).sum())
        want = col.sort(descending=True).values[:5]
        want[nz:] = 0
        assert torch.allclose(out["top_acts"][feat], want), feat
        for j in range(min(5, nz)):
            flat = int(out["top_index"][feat, j])
            assert math.isclose(float(col[(local == flat).nonzero().item()]), float(want[j]), rel_tol=1e-6)
            toks, acts = _window_ref(rows, docs, local, f, feat, flat, 3)
            assert out["top_tokens"][feat, j].tolist() == toks
            assert torch.allclose(out["top_token_acts"][feat, j], torch.tensor(acts))
            assert out["top_doc"][feat, j] == docs.reshape(-1)[flat]
        assert (out["top_index"][feat, nz:] == -1).all()
        # histogram: 32 linear bins over [0, max_act], counts sum to the non-zero count
        assert abs(int(out["hist_counts"][feat].sum()) - nz) <= 2
        edges = out["hist_edges"][feat]
        assert math.isclose(float(edges[-1]), float(col.max()), rel_tol=1e-6) and float(edges[0]) == 0.0
        ref = torch.histc(col[col > 0], bins=32, min=0, max=float(col.max()))
        assert (out["hist_counts"][feat].float() - ref).abs().sum() <= 0.2 * nz + 2
        # quantile samples: real occurrences, ascending by bin, each bin full when enough data
        qa, qi = out["quantile_acts"][feat], out["quantile_index"][feat]
        present = qi >= 0
        assert int(present.sum()) == min(nz, 8)
        vals = qa[present]
        assert (vals[1:] >= vals[:-1]).all()
        for a, i in zip(qa[present].tolist(), qi[present].tolist()):
            assert math.isclose(float(col[(local == i).nonzero().item()]), a, rel_tol=1e-6)
        if nz >= 8:
            assert present.all()


def test_chunking_does_not_change_results():
    rows, docs, local, f = _synthetic(seed=3)
    cfg = StatsConfig(k=4, window=2, quantile_bins=2, samples_per_bin=2)
    a, _ = _feed(rows, docs, local, f, cfg, rows_per_chunk=12)
    b, _ = _feed(rows, docs, local, f, cfg, rows_per_chunk=2)
    for key in ("max_act", "density", "top_acts", "top_index", "top_tokens", "top_token_acts", "hist_counts",
                "quantile_acts", "quantile_index", "quantile_token_acts"):
        assert torch.equal(a[key], b[key]), key


def test_quantile_bins_cover_the_distribution():
    """With many occurrences, bin q's samples sit near the q-th quantile band (equal-count bins)."""
    g = torch.Generator().manual_seed(1)
    R, L = 200, 50
    rows = torch.zeros(R, L, dtype=torch.long)
    docs = torch.arange(R)[:, None].expand(R, L).clone()
    local = torch.arange(R * L)
    f = torch.rand(R * L, 1, generator=g)  # uniform(0,1): quantile q/Q sits at q/Q
    cfg = StatsConfig(k=2, window=1, quantile_bins=4, samples_per_bin=25)
    out, _ = _feed(rows, docs, local, f, cfg, rows_per_chunk=20)
    q = out["quantile_acts"][0].reshape(4, 25)
    means = q.mean(1)
    assert torch.allclose(means, torch.tensor([0.125, 0.375, 0.625, 0.875]), atol=0.08), means


def test_decoder_neighbors():
    W = torch.eye(6)
    W[1] = W[0] * 2 + 0.01 * W[2]
    out = decoder_neighbors(W, n=3)
    assert out["neighbor_ids"][0, 0] == 1 and out["neighbor_ids"][1, 0] == 0
    assert out["neighbor_cos"][0, 0] > 0.99
    assert (out["neighbor_ids"] != torch.arange(6)[:, None]).all()


# --- on the embedded model ------------------------------------------------------------------------

def make_run(tmp_path, d_sae=64, layer=3, seed=0, plant=None):
    """A run directory with a random TopK SAE on the embedded model (no training)."""
    from sae.architectures import SAEConfig, SparseAutoencoder
    from sae.io import write_json_atomic
    from sae.models import EMBEDDED_ID

    cfg = SAEConfig(arch="topk", d_in=576, d_sae=d_sae, k=8, hook_name=f"blocks.{layer}.hook_resid_post",
                    metadata={"model_id": EMBEDDED_ID, "context_size": 64})
    sae = SparseAutoencoder(cfg)
    sae.init_weights(torch.Generator().manual_seed(seed))
    if plant is not None:
        plant(sae)
    run = tmp_path / "run"
    sae.save(run / "sae")
    write_json_atomic(run / "metrics.json", {"mean_resid_norm": 100.0})
    return run


def _small_corpus(tmp_path, n=6):
    from labeling.corpus import load_corpus

    rows = load_corpus()
    pick = [rows[i] for i in range(0, len(rows), len(rows) // n)][:n]
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in pick))
    return path, pick


def test_compute_stats_on_corpus_and_cache(tmp_path, lm):
    from features.stats import compute_stats
    from sae.harvest_cli import harvest_to_cache

    from sae.layout import sae_fingerprint

    run = make_run(tmp_path)
    path, pick = _small_corpus(tmp_path)
    # given RUN/sae, the statistics still go to RUN/features, where every other verb reads them
    s = compute_stats(run / "sae", corpus=path, lm=lm, cfg=StatsConfig(k=4, window=3, quantile_bins=2, samples_per_bin=2))
    assert not (run / "sae" / "features").exists() and not (run / "sae" / "labeling").exists()
    assert s["n_tokens"] > 300
    t = load_file(str(run / "features" / "stats.safetensors"))
    d = 64
    assert t["max_act"].shape == (d,) and t["density"].shape == (d,)
    assert t["top_tokens"].shape == (d, 4, 7) and t["top_tokens"].dtype == torch.int32
    assert t["quantile_tokens"].shape == (d, 4, 7)
    assert t["hist_counts"].shape == (d, 32) and t["hist_edges"].shape == (d, 33)
    assert t["logit_pos_ids"].shape == (d, 10) and t["neighbor_ids"].shape == (d, 10)
    assert (t["logit_pos_vals"][:, 0] >= t["logit_neg_vals"][:, 0]).all()
    vocab = json.loads((run / "features" / "vocab.json").read_text())
    meta = json.loads((run / "features" / "meta.json").read_text())
    assert len(vocab) >= 49152 and meta["k"] == 4 and meta["window"] == 3 and "quantiles" in meta["method"]
    assert meta["sae_fingerprint"] == sae_fingerprint(run / "sae")
    # the centre token of a top context is the token at that flat index, and its act the top act
    live = (t["top_index"][:, 0] >= 0).nonzero().squeeze(1)
    assert len(live) > 0
    L = meta["context_size"]
    ids = [lm.tokenizer(r["text"], add_special_tokens=False)["input_ids"] for r in pick]
    for feat in live[:10].tolist():
        flat = int(t["top_index"][feat, 0])
        p, pos = divmod(flat, L)
        assert int(t["top_tokens"][feat, 0, 3]) == ids[p][pos]
        assert math.isclose(float(t["top_token_acts"][feat, 0, 3]), float(t["top_acts"][feat, 0]), rel_tol=1e-5)
        assert pos >= 1  # the first token is masked

    # the same statistics from an activation cache of a text file
    txt = tmp_path / "texts.jsonl"
    txt.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in pick))
    cache = tmp_path / "cache"
    harvest_to_cache(model="smollm2-135m", hooks=["blocks.3.hook_resid_post"], dataset=str(txt), out=str(cache),
                     context_size=64, token_budget=256, lm=lm)
    s2 = compute_stats(run, cache_dir=cache, lm=lm, out_dir=tmp_path / "f2",
                       cfg=StatsConfig(k=4, window=3, quantile_bins=2, samples_per_bin=2))
    t2 = load_file(str(tmp_path / "f2" / "stats.safetensors"))
    assert s2["source"]["kind"] == "cache" and s2["n_tokens"] > 200
    assert (t2["max_act"] > 0).any()
    assert (t2["top_doc"][t2["top_index"] >= 0] >= 0).all()
    # a training run's data.cache (train/ + heldout) opens as its train/ cache, so `--cache` takes either
    import shutil

    from sae.cache import ActivationCache

    shutil.copytree(cache, tmp_path / "run_cache" / "train")
    assert ActivationCache.open(tmp_path / "run_cache").directory == tmp_path / "run_cache" / "train"


def test_stats_cli_errors(tmp_path, capsys):
    from sae.cli import main

    run = make_run(tmp_path)
    assert main(["stats", str(run), "--cache", str(tmp_path / "nope")]) == 2
    assert "no activation cache" in capsys.readouterr().err
    assert main(["stats", str(tmp_path / "missing")]) == 2
