"""Evals: the one FVE function, the CE-loss score with the SAE spliced in (1 for a perfect SAE,
0 for one that outputs zeros, masked positions untouched), and optional wandb logging that never
stops training."""

from __future__ import annotations

import json

import pytest
import torch
from train_fixtures import HOOK, real_cache, tiny_config

from sae.architectures import SAEConfig, SparseAutoencoder
from sae.evals import ce_loss_score, evaluate_sae, fve
from sae.train_data import HELDOUT_FILE, HeldOut


def test_fve_definition():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 16, generator=g) * 3 + 2
    assert fve(x, x) == 1.0
    assert fve(x, x.mean(0).expand_as(x)) == pytest.approx(0.0, abs=1e-12)
    noise = torch.randn(500, 16, generator=g)
    expected = 1 - (noise.double() ** 2).sum() / ((x.double() - x.double().mean(0)) ** 2).sum()
    assert fve(x, x + noise) == pytest.approx(float(expected), rel=1e-6)


def _identity_sae(d: int) -> SparseAutoencoder:
    """Standard SAE with latents x+ and x-: relu(x) - relu(-x) = x, a perfect reconstruction."""
    s = SparseAutoencoder(SAEConfig(arch="standard", d_in=d, d_sae=2 * d, k=None, hook_name=HOOK))
    eye = torch.eye(d)
    with torch.no_grad():
        s.W_enc.copy_(torch.cat([eye, -eye], 1))
        s.W_dec.copy_(torch.cat([eye, -eye], 0))
        s.b_enc.zero_()
        s.b_dec.zero_()
    return s.eval()


def test_ce_loss_score_bounds(lm, tmp_path_factory):
    cache = real_cache(lm, tmp_path_factory.getbasetemp())
    held = HeldOut.load(cache / HELDOUT_FILE)
    rows = slice(0, 2)
    batch = type(held.batch)(held.batch.input_ids[rows], held.batch.doc_ids[rows], held.batch.positions[rows])
    keep = held.keep[rows]
    d = held.acts[HOOK].shape[1]
    perfect = ce_loss_score(lm.model, lm.tokenizer, _identity_sae(d), batch, keep)
    assert perfect["ce_zero"] > perfect["ce_clean"] + 1
    assert perfect["ce_sae"] == pytest.approx(perfect["ce_clean"], abs=1e-3)
    assert perfect["ce_loss_score"] == pytest.approx(1.0, abs=1e-3)
    zero = _identity_sae(d)
    with torch.no_grad():
        zero.W_dec.zero_()
    z = ce_loss_score(lm.model, lm.tokenizer, zero, batch, keep)
    assert z["ce_sae"] == pytest.approx(z["ce_zero"], abs=1e-4) and z["ce_loss_score"] == pytest.approx(0.0, abs=1e-4)
    # masked positions are left alone: zero-ablating every position would cost more
    everywhere = ce_loss_score(lm.model, lm.tokenizer, zero, batch, torch.ones_like(keep))
    assert everywhere["ce_sae"] != pytest.approx(z["ce_sae"], abs=1e-3)
    assert evaluate_sae(_identity_sae(d), held.acts[HOOK])["fve"] == pytest.approx(1.0, abs=1e-9)


def test_wandb_offline_and_failures_never_stop_training(lm, tmp_path_factory, tmp_path, monkeypatch):
    import wandb

    from sae.trainer import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cache = real_cache(lm, tmp_path_factory.getbasetemp())
    run = tmp_path / "wandb0" / "run"
    m = train(tiny_config(cache, overrides=["log.wandb.project=emosae-test", "log.wandb.every_steps=2"]), run)
    assert m["steps"] > 0
    assert list((run / "wandb").glob("offline-run-*")), "no offline wandb run written"

    def boom(*a, **kw):
        raise RuntimeError("wandb is down")

    monkeypatch.setattr(wandb, "init", boom)
    run2 = tmp_path / "wandb1" / "run"
    m2 = train(tiny_config(cache, overrides=["log.wandb.project=emosae-test"]), run2)
    assert m2["steps"] == m["steps"] and json.loads((run2 / "metrics.json").read_text())["fve"] == m2["fve"]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gemma2"])
def test_ce_loss_score_shared_prefix_equals_three_full_passes(family):
    """The clean pass's prefix replayed for the SAE and zero passes gives the numbers of three
    full forwards, at every depth and hook kind (the hook's own block always runs)."""
    from sae.data import TokenBatch
    from sae.hooks import HOOK_KINDS
    from tests.tiny_models import tiny_model

    model = tiny_model(family)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 128, (5, 24), generator=g)
    docs = (torch.arange(24) >= 10).long().expand(5, 24).clone()  # two documents per row
    pos = torch.where(docs == 0, torch.arange(24), torch.arange(24) - 10)
    batch = TokenBatch(ids, docs, pos)
    keep = pos > 0
    d = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd
    for layer in range(3):
        for kind in HOOK_KINDS:
            sae = SparseAutoencoder(SAEConfig(arch="topk", d_in=d, d_sae=96, k=6, hook_name=f"blocks.{layer}.{kind}"))
            sae.init_weights(torch.Generator().manual_seed(layer))
            shared = ce_loss_score(model, None, sae, batch, keep, rows_per_forward=2)
            full = ce_loss_score(model, None, sae, batch, keep, rows_per_forward=2, share_prefix=False)
            ces = ("ce_clean", "ce_sae", "ce_zero")
            assert [shared[c] for c in ces] == [full[c] for c in ces], (layer, kind)
            assert shared["ce_zero"] != shared["ce_clean"] and shared["ce_sae"] != shared["ce_clean"]
