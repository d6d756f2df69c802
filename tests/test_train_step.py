"""The per-SAE training step: non-finite steps are skipped, counted and stop the run past the
limit; the lr schedule warms up and decays; the normaliser is folded into the exported weights;
JumpReLU and Standard steps lower their loss."""

from __future__ import annotations

import copy

import pytest
import torch

from sae.config import SAESpec, TrainConfig
from sae.dist import Dist
from sae.errors import UserError
from sae.train_step import SAETrainer, geometric_median


def _trainer(arch="topk", **train) -> SAETrainer:
    spec = SAESpec(arch=arch, d_sae=256, k=8 if arch in ("topk", "batchtopk") else None, name="t",
                   hook="blocks.0.hook_resid_post")
    return SAETrainer(spec, TrainConfig(**{"batch_size": 128, "lr": 1e-3, "warmup_steps": 0, **train}), 32, 0, {},
                      torch.device("cpu"))


def _data(n=128, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 32, generator=g) * 40 + 5


def test_nan_steps_are_skipped_then_stop():
    tr = _trainer(max_bad_steps=2)
    tr.initialize(_data(), Dist())
    before = [p.detach().clone() for p in tr.params]
    bad = _data()
    bad[3, 4] = float("nan")
    out = tr.step(bad, 0.1, Dist())
    assert out.get("skipped") and tr.bad_steps == 1 and tr.step_n == 0
    assert all(torch.equal(a, b) for a, b in zip(before, tr.params))  # nothing moved
    tr.step(_data(seed=1), 0.1, Dist())  # a good step still trains
    assert tr.step_n == 1
    tr.step(bad, 0.1, Dist())
    with pytest.raises(UserError, match="non-finite"):
        tr.step(bad, 0.1, Dist())


def test_lr_schedule():
    tr = _trainer(warmup_steps=10, decay_start=0.8, lr_end=0.1)
    assert tr.lr_at(0.0) == pytest.approx(1e-4)
    tr.step_n = 50
    assert tr.lr_at(0.5) == pytest.approx(1e-3)
    assert tr.lr_at(0.9) == pytest.approx(1e-3 * (1 - 0.9 * 0.5))
    assert tr.lr_at(1.0) == pytest.approx(1e-4)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "standard"])
def test_export_folds_normaliser_and_learns(arch):
    tr = _trainer(arch)
    x = _data(512)
    tr.initialize(x[:128], Dist())
    assert tr.scale == pytest.approx(32 ** 0.5 / float(x[:128].norm(dim=1).mean()))
    losses = [tr.step(x[i % 4 * 128:(i % 4 + 1) * 128], 0.5, Dist())["loss"] for i in range(40)]
    assert losses[-1] < losses[0]
    sae = tr.export()
    with torch.no_grad():  # same feature activations on raw x as the trained SAE on scaled x
        tr.sae.batch_level = False
        if arch == "jumprelu":
            tr.sae.threshold.copy_(tr.log_threshold.exp())
        if arch == "batchtopk":
            tr.sae.threshold.copy_(sae.threshold)
        f_train = tr.sae.encode(x * tr.scale)
        f_raw = sae.encode(x)
        assert torch.allclose(f_raw, f_train, rtol=1e-4, atol=1e-4)
        assert torch.allclose(sae.decode(f_raw), tr.sae.decode(f_train) / tr.scale, rtol=1e-4, atol=1e-3)
    assert torch.allclose(tr.sae.W_dec.norm(dim=1), torch.ones(256), atol=1e-5)
    if arch == "batchtopk":
        assert float(sae.threshold[0]) > 0 and torch.all(sae.threshold == sae.threshold[0])


def test_geometric_median_resists_outliers():
    x = torch.randn(200, 4) + 3
    x[:5] += 1000
    gm = geometric_median(x)
    assert (gm - 3).abs().max() < 0.5 and (x.mean(0) - 3).abs().max() > 10


def test_schedule_free_signum_matches_its_three_sequences():
    """y (the parameter), z (sign descent) and x (lr^2-weighted average of z) by hand, 5 steps with
    a warm-up; `averaged` gives x."""
    from sae.optim import ScheduleFreeSignSGD

    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(7, generator=g))
    opt = ScheduleFreeSignSGD([p], lr=0.1, momentum=0.9)
    z, x, wsum, beta = p.detach().clone(), p.detach().clone(), 0.0, 0.9
    for step, lr in enumerate([0.02, 0.05, 0.1, 0.1, 0.1]):
        grad = torch.randn(7, generator=g)
        for grp in opt.param_groups:
            grp["lr"] = lr
        p.grad = grad.clone()
        opt.step()
        z = z - lr * grad.sign()
        wsum += lr ** 2
        x = x + (lr ** 2 / wsum) * (z - x)
        y = (1 - beta) * z + beta * x
        torch.testing.assert_close(p.detach(), y, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(opt.averaged(p), x, rtol=1e-6, atol=1e-6)


def test_signum_trainer_learns_and_exports_the_average():
    tr = _trainer(optimizer="signum", lr=5e-3)
    x = _data(512)
    tr.initialize(x[:128], Dist())
    assert tr.lr_at(0.99) == pytest.approx(5e-3)  # schedule-free: no decay
    losses = [tr.step(x[i % 4 * 128:(i % 4 + 1) * 128], 0.5, Dist())["loss"] for i in range(30)]
    assert losses[-1] < 0.7 * losses[0]
    sae = tr.export()
    assert not torch.equal(sae.W_enc, tr.sae.W_enc)  # x, not the gradient point y
    torch.testing.assert_close(sae.W_dec, tr.opt.averaged(tr.sae.W_dec) / tr.scale)
    state = copy.deepcopy(tr.state_dict())  # as a checkpoint file would: no tensors shared with tr
    tr2 = _trainer(optimizer="signum", lr=5e-3)
    tr2.load_state_dict(state)
    a = tr.step(x[:128], 0.5, Dist())["loss"]
    b = tr2.step(x[:128], 0.5, Dist())["loss"]
    assert a == b and all(torch.equal(p, q) for p, q in zip(tr.params, tr2.params))
