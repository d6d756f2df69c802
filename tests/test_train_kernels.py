"""The sparse TopK/BatchTopK path (sae/kernels.py) gives the dense reference's loss and gradients,
and a whole training step (AuxK over dead latents included) lands on the same weights."""

from __future__ import annotations

import pytest
import torch

from sae import kernels as K
from sae.architectures import SAEConfig, SparseAutoencoder
from sae.config import SAESpec, TrainConfig
from sae.dist import Dist
from sae.train_step import SAETrainer

RTOL = 1e-4
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=RTOL, atol=RTOL * float(b.abs().max()))


def _sae(arch: str, d_in=48, d_sae=384, k=8, seed=0, device="cpu") -> SparseAutoencoder:
    s = SparseAutoencoder(SAEConfig(arch=arch, d_in=d_in, d_sae=d_sae, k=k))
    s.init_weights(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        s.b_dec.normal_(generator=torch.Generator().manual_seed(seed + 1))
        s.b_enc.normal_(std=0.1, generator=torch.Generator().manual_seed(seed + 2))
    return s.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_sparse_loss_and_grads_equal_dense(arch, device):
    s = _sae(arch, device=device)
    x = (torch.randn(257, 48, generator=torch.Generator().manual_seed(3)) * 2 + 0.5).to(device)
    loss_d = (s(x) - x).pow(2).sum()
    loss_d.backward()
    dense = {n: p.grad.clone() for n, p in s.named_parameters() if p.grad is not None}
    s.zero_grad(set_to_none=True)

    pre = K.pre_acts(x, s.W_enc, s.b_enc, s.b_dec)
    vals, codes = (K.topk_codes if arch == "topk" else K.batchtopk_codes)(pre, s.cfg.k)
    acts = K.encode_at(vals, codes, x, s.W_enc, s.b_enc, s.b_dec).relu()
    sparse_acts, dense_acts = K.dense_acts(acts.detach(), codes), s.encode(x).detach()
    # bitwise on CPU; cuBLAS may sum the same dot products in another order than the gather path
    assert torch.equal(sparse_acts, dense_acts) if device == "cpu" else _close(sparse_acts, dense_acts)
    x_hat = K.decode(acts, codes, s.W_dec) + s.b_dec
    loss_s = (x_hat - x).pow(2).sum()
    loss_s.backward()
    assert abs(loss_s.item() - loss_d.item()) <= RTOL * loss_d.item()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        g = getattr(s, name).grad
        assert g is not None and g.shape == dense[name].shape
        assert _close(g, dense[name]), name
    # only the columns of latents that fired received encoder gradient
    touched = (s.W_enc.grad != 0).any(0)
    assert touched.sum() <= codes.cols.unique().numel()


def test_batchtopk_codes_vary_per_token():
    pre = torch.randn(64, 100, generator=torch.Generator().manual_seed(0))
    pre[0] += 10  # token 0 takes many of the batch's slots
    _, codes = K.batchtopk_codes(pre, 4)
    per_token = torch.bincount(codes.rows, minlength=64)
    assert per_token.sum() == 4 * 64 and per_token[0] > 4
    assert torch.equal(codes.offsets, torch.cat([torch.zeros(1, dtype=torch.long), per_token.cumsum(0)[:-1]]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_training_steps_equal_dense(arch, device):
    """Three optimizer steps, sparse vs dense, with a third of the latents marked dead (AuxK on)."""
    spec = SAESpec(arch=arch, d_sae=384, k=8, hook="blocks.0.hook_resid_post", name="t")
    tcfg = TrainConfig(batch_size=200, lr=1e-3, warmup_steps=0, dead_tokens=1000, auxk_k=24)
    trainers = []
    for sparse in (True, False):
        tr = SAETrainer(spec, TrainConfig(**{**tcfg.__dict__, "sparse": sparse}), 48, 0, {}, torch.device(device))
        trainers.append(tr)
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(200, 48, generator=g) * 3 + 1).to(device) for _ in range(3)]
    for tr in trainers:
        tr.initialize(batches[0], Dist())
    for x in batches:
        for tr in trainers:
            tr.since_fired[::3] = 10_000  # dead: AuxK must revive them the same way on both paths
        outs = [tr.step(x, 0.5, Dist()) for tr in trainers]
        assert outs[0]["aux"] > 0 and abs(outs[0]["aux"] - outs[1]["aux"]) <= RTOL * outs[1]["aux"]
        assert abs(outs[0]["loss"] - outs[1]["loss"]) <= RTOL * outs[1]["loss"]
    for a, b in zip(trainers[0].params, trainers[1].params):
        assert _close(a.detach(), b.detach())
    # decoder rows stay at unit norm
    assert torch.allclose(trainers[0].sae.W_dec.norm(dim=1), torch.ones(384, device=device), atol=1e-5)
