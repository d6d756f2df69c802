"""Four architectures trained from one pass of the cache on real activations of the embedded model;
each saved SAE loads in SAELens (`SAE.load_from_disk`) with the same encode/decode as emosae, and
the run directory holds what docs/formats.md lists."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tolerance_close
from train_fixtures import HOOK, real_cache, tiny_config

from sae.architectures import load_sae
from sae.train_data import HELDOUT_FILE, HeldOut
from sae.trainer import train

ARCHS = ["topk", "batchtopk", "jumprelu", "standard"]
METRIC_KEYS = {"fve", "mse", "l0", "dead", "dense", "mean_resid_norm", "ce_clean", "ce_sae", "ce_zero",
               "ce_loss_score", "tokens", "seconds", "tokens_per_s", "history"}


@pytest.fixture(scope="module")
def multi_run(lm, tmp_path_factory):
    cache = real_cache(lm, tmp_path_factory.getbasetemp())
    saes = "saes:\n" + "".join(f"  - {{name: {a}, arch: {a}, d_sae: 512, k: 8}}\n" for a in ARCHS)
    cfg = tiny_config(cache, saes, ce_eval=True, ce_tokens=256, epochs=2)
    run = tmp_path_factory.mktemp("multi") / "run"
    metrics = train(cfg, run)
    return run, metrics, HeldOut.load(cache / HELDOUT_FILE)


def test_run_layout(multi_run):
    run, metrics, _ = multi_run
    index = json.loads((run / "index.json").read_text())
    assert [s["name"] for s in index["saes"]] == ARCHS
    assert (run / "config.yaml").exists() and list((run / "checkpoints").glob("ckpt_*.pt"))
    assert "autocast: 'off'" in (run / "config.yaml").read_text()  # "auto" on CPU, written resolved
    for name in ARCHS:
        d = run / name
        m = json.loads((d / "metrics.json").read_text())
        assert METRIC_KEYS <= set(m), METRIC_KEYS - set(m)
        assert m == json.loads(json.dumps(metrics["saes"][name]))
        assert 0 <= m["dead"] <= 1 and 0 <= m["dense"] <= 1 and m["mean_resid_norm"] > 0
        assert m["ce_zero"] > m["ce_clean"] and m["tokens"] > 0 and m["history"]
        assert {"step", "tokens", "loss", "fve", "l0", "dead", "lr"} <= set(m["history"][0])
        assert (d / "curves.png").stat().st_size > 1000 and (d / "config.yaml").exists()
        assert (d / "sae" / "cfg.json").exists()
    assert metrics["saes"]["topk"]["l0"] <= 8


@pytest.mark.parametrize("arch", ARCHS)
def test_saelens_loads_same_encode_decode(multi_run, arch):
    from sae_lens import SAE

    run, _, heldout = multi_run
    x = heldout.acts[HOOK]
    ours = load_sae(run / arch)
    theirs = SAE.load_from_disk(str(run / arch / "sae"))
    cfg = json.loads((run / arch / "sae" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == HOOK and cfg["metadata"]["hook_name_module"] == "model.layers.15"
    assert cfg["architecture"] == {"batchtopk": "jumprelu"}.get(arch, arch)
    with torch.no_grad():
        f_ours, f_theirs = ours.encode(x), theirs.encode(x)
        median = float(x.norm(dim=-1).median())
        assert torch.allclose(f_ours, f_theirs, rtol=1e-4, atol=1e-5 * median)
        assert tolerance_close(ours.decode(f_ours), theirs.decode(f_theirs))
        assert (f_ours > 0).sum(-1).float().mean() > 0  # not a dead SAE


def test_saved_sae_works_on_raw_activations(multi_run):
    """The normaliser is folded in: the saved SAE reconstructs raw activations (its FVE there is
    the one in metrics.json)."""
    from sae.evals import evaluate_sae

    run, metrics, heldout = multi_run
    sae = load_sae(run / "topk")
    m = evaluate_sae(sae, heldout.acts[HOOK])
    assert m["fve"] == pytest.approx(metrics["saes"]["topk"]["fve"], abs=1e-6)
    assert m["fve"] > 0.2
