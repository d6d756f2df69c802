"""The CUDA paths give the CPU's numbers: harvest, training end to end (harvest on the GPU, the
sparse TopK step, evals, save), the saved SAE on either device, and clamping inside the model, the
user's `clamp` path included. Marked `cuda`: skipped where torch sees no GPU (CI), run on a lent GPU
machine by `scripts/gpu_check.sh`. The sparse-vs-dense kernel tests run on CUDA too
(tests/test_train_kernels.py, parametrized by device)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tolerance_close
from safetensors.torch import save_file
from train_fixtures import CORPUS, HOOK, tiny_config

from sae.architectures import SAEConfig, SparseAutoencoder, load_sae
from sae.data import token_batches
from sae.harvest import harvest

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def lm_cuda():
    from sae.models import load_model

    return load_model("smollm2-135m", device="cuda", autocast="off")  # float32, as the CPU reference


def _harvest(lm, n_tokens=2048):
    batches = token_batches(str(CORPUS), lm.tokenizer, 128, 1024, limit_tokens=n_tokens)
    return list(harvest(lm.model, lm.tokenizer, batches, [HOOK]))


def test_harvest_on_cuda_matches_cpu(lm, lm_cuda):
    cpu, gpu = _harvest(lm), _harvest(lm_cuda)
    assert len(cpu) == len(gpu) > 0
    for a, b in zip(cpu, gpu):
        assert torch.equal(a.keep.cpu(), b.keep.cpu())  # the same position mask
        assert b.acts[HOOK].shape == a.acts[HOOK].shape
        assert tolerance_close(b.acts[HOOK].float().cpu(), a.acts[HOOK].float())


def test_bf16_autocast_on_cuda_stays_close_to_float32(lm_cuda):
    from sae.models import load_model

    lm16 = load_model("smollm2-135m", device="cuda", autocast="bf16")
    assert lm16.autocast == "bf16"
    x32 = torch.cat([c.acts[HOOK].float().cpu() for c in _harvest(lm_cuda)])
    x16 = torch.cat([c.acts[HOOK].float().cpu() for c in _harvest(lm16)])
    assert x16.shape == x32.shape
    fve = 1 - (x16 - x32).pow(2).sum() / (x32 - x32.mean(0)).pow(2).sum()
    assert 0.99 < float(fve) < 1.0  # bf16 moved the numbers, a little


@pytest.mark.parametrize("mode", ["cache", "stream"])
def test_train_on_cuda_end_to_end(lm, tmp_path, mode):
    """Harvest, sparse TopK training, evals and save all on the GPU give the CPU run's SAE (its
    held-out FVE; cache mode: 0.1315487 on both when measured); in stream mode the shuffle buffer
    sits on the GPU and a thread tokenizes ahead. The saved SAE encodes the same on CPU and GPU."""
    from sae.trainer import train

    mode_set = ["data.mode=stream", "data.buffer_tokens=1024"] if mode == "stream" else []
    runs = {dev: train(tiny_config(tmp_path / f"cache-{dev}", overrides=[f"model.device={dev}", "model.autocast=off",
                                                                        *mode_set]),
                       tmp_path / f"run-{dev}") for dev in ("cpu", "cuda")}
    m = runs["cuda"]
    assert m["steps"] == runs["cpu"]["steps"] > 10 and m["skipped_steps"] == 0 and 6 < m["l0"] <= 8
    assert m["fve"] == pytest.approx(runs["cpu"]["fve"], abs=1e-4) and m["fve"] > 0.05
    x = torch.cat([c.acts[HOOK] for c in _harvest(lm, 1024)])
    on_cpu, on_gpu = load_sae(tmp_path / "run-cuda"), load_sae(tmp_path / "run-cuda", "cuda")
    assert tolerance_close(on_gpu.decode(on_gpu.encode(x.cuda())).cpu(), on_cpu.decode(on_cpu.encode(x)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A random-weight SAE at HOOK with the files clamps read (max_act, mean_resid_norm)."""
    root = tmp_path_factory.mktemp("cuda-run")
    sae = SparseAutoencoder(SAEConfig(arch="topk", d_in=576, d_sae=64, k=8, hook_name=HOOK,
                                      metadata={"model_id": "smollm2-135m-instruct-q4_1"}))
    sae.init_weights(torch.Generator().manual_seed(0))
    sae.save(root / "sae")
    (root / "features").mkdir()
    save_file({"max_act": torch.linspace(1.0, 64.0, 64)}, str(root / "features" / "stats.safetensors"))
    (root / "metrics.json").write_text(json.dumps({"mean_resid_norm": 170.0}))
    return root


def test_clamp_on_cuda_matches_cpu(lm, lm_cuda, run):
    from features.clamp import clamp, load_run
    from sae.hooks import hooks, run_to_hooks

    chat = lm.tokenizer.apply_chat_template([{"role": "user", "content": "Tell me about your morning."}],
                                            tokenize=False, add_generation_prompt=True)
    enc = lm.tokenizer(chat, add_special_tokens=False, return_tensors="pt")
    enc_gpu = {k: v.cuda() for k, v in enc.items()}
    assets, assets_gpu = load_run(run), load_run(run, "cuda")
    spec = {7: 5.0, 3: "scale=3", 11: "4x", 20: "add=0.05r"}
    seen = {}
    with torch.no_grad():
        base = lm_cuda.model(**enc_gpu).logits
        with clamp(lm_cuda.model, assets_gpu, {3: "scale=1", 5: "add=0"}):
            assert torch.equal(lm_cuda.model(**enc_gpu).logits, base)  # a no-op is exact on the GPU too
        raw = run_to_hooks(lm_cuda.model, [HOOK], **enc_gpu)[HOOK]
        with clamp(lm_cuda.model, assets_gpu, {7: 5.0}, skip_outliers=None):
            with hooks(lm_cuda.model, {HOOK: lambda x: seen.setdefault("x", x.clone())}):
                lm_cuda.model(**enc_gpu)
        w = assets_gpu.sae.W_dec
        expected = raw + (5.0 - assets_gpu.sae.encode(raw)[..., 7:8]) * w[7]
        assert torch.allclose(seen["x"], expected, rtol=1e-5, atol=1e-3)
        with clamp(lm.model, assets, spec):
            cpu = lm.model(**enc).logits
        with clamp(lm_cuda.model, assets_gpu, spec):
            gpu = lm_cuda.model(**enc_gpu).logits
    assert not torch.allclose(gpu, base)
    # float32 on both; 30 layers of differently ordered sums after the edit
    assert float((gpu.cpu() - cpu).abs().max()) <= 1e-3 * float(cpu.abs().max())
    assert torch.equal(gpu.argmax(-1).cpu(), cpu.argmax(-1))


def test_clamp_command_path_on_cuda(run):
    """What `emosae clamp RUN --device cuda` runs: the model the SAE names, batched sampling."""
    from features.clamp_cli import run_clamp

    rows = run_clamp(str(run), [("11", "12x")], [], ["Write one sentence about the sea."], samples=2,
                     max_new_tokens=12, device="cuda")
    assert len(rows) == 2 and all(r["baseline"] and r["clamped"] for r in rows)
    assert any(r["baseline"] != r["clamped"] for r in rows)
