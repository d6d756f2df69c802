"""Checkpoint and resume: a training subprocess killed with SIGKILL and resumed with
`emosae train --resume RUN` ends with the weights of an uninterrupted run (max abs diff <= 1e-6)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_fixtures import real_cache, tiny_yaml

from sae.architectures import load_sae

ROOT = Path(__file__).resolve().parents[1]


def _emosae(*args: str) -> list[str]:
    return [sys.executable, "-m", "sae.cli", *args]


def _env() -> dict:
    return {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _ckpt_tokens(run: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (run / "checkpoints").glob("ckpt_*.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["cache", "stream"])
def test_resume_after_sigkill_matches_uninterrupted(lm, tmp_path_factory, tmp_path, mode):
    """cache: the data position is (epoch, shard slot, row); stream: LM batches consumed plus the
    shuffle buffer and the batches already cut from it, all in the checkpoint."""
    cache = real_cache(lm, tmp_path_factory.getbasetemp())
    tmp = tmp_path
    cfg = tmp / "cfg.yaml"
    text = tiny_yaml(cache, epochs=5, checkpoint_every_tokens=2048, eval_every_steps=10)
    if mode == "stream":
        text = text.replace("tokens: 4096,", "tokens: 16384, mode: stream, buffer_tokens: 1024,")
    cfg.write_text(text)

    ref, killed = tmp / "ref", tmp / "killed"
    subprocess.run(_emosae("train", "--config", str(cfg), "--run", str(ref)), check=True, env=_env(), cwd=ROOT,
                   timeout=900)
    total = json.loads((ref / "metrics.json").read_text())["tokens"]

    proc = subprocess.Popen(_emosae("train", "--config", str(cfg), "--run", str(killed)), env=_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not _ckpt_tokens(killed) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (killed / "metrics.json").exists(), "the run finished before the kill"
    at = _ckpt_tokens(killed)
    assert at and at[-1] < total  # killed part-way through training

    out = subprocess.run(_emosae("train", "--resume", str(killed), "--json"), check=True, env=_env(), cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    resumed = json.loads(out.stdout)
    assert resumed["tokens"] == total and "history" not in resumed

    a, b = load_sae(ref), load_sae(killed)
    worst = max(float((getattr(a, n) - getattr(b, n)).abs().max()) for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    assert worst <= 1e-6, worst
    ref_m, res_m = (json.loads((r / "metrics.json").read_text()) for r in (ref, killed))
    assert [h["loss"] for h in ref_m["history"]] == pytest.approx([h["loss"] for h in res_m["history"]], rel=1e-6)


def test_resume_refuses_mismatches(lm, tmp_path_factory, tmp_path):
    """A finished run cannot be overwritten by a fresh one; --resume needs a run directory."""
    from sae.errors import UserError
    from sae.trainer import resume, train
    from train_fixtures import tiny_config

    cache = real_cache(lm, tmp_path_factory.getbasetemp())
    run = tmp_path / "run"
    cfg = tiny_config(cache)
    m = train(cfg, run)
    assert m["steps"] >= 1 and (run / "sae" / "cfg.json").exists()
    with pytest.raises(UserError, match="--resume"):
        train(tiny_config(cache), run)
    with pytest.raises(UserError, match="holds no training run"):
        resume(run / "nowhere")
    again = resume(run)  # resuming a finished run re-evaluates and gives the same weights
    assert again["tokens"] == m["tokens"] and again["fve"] == pytest.approx(m["fve"], abs=1e-9)
    assert torch.equal(load_sae(run).W_dec, load_sae(run).W_dec)
