"""One SAE's optimisation: its parameters, Adam, the lr schedule, dead-latent tracking, the input
normaliser, and the training step for each architecture.

Conventions (stated, as the issue asks):
- The SAE trains on x * scale with scale = sqrt(d_in) / E||x|| (measured on the first global batch);
  `export()` folds the scale into the weights, so the saved SAE works on raw activations.
- Decoder rows are kept at unit norm: the gradient component along each row is removed before the
  step and the rows are renormalised after it (Standard's L1 penalty is then on f alone).
- The loss is (sum ||x - x_hat||^2 + penalty) / sum ||x - mean(x)||^2 over the global batch (the
  FVU, then sparsify's scale); Standard's penalty is l1_coeff * sum f, JumpReLU's l0_coeff * L0
  (SAELens's units for both); TopK/BatchTopK add AuxK over the dead latents (Gao et al. 2024).
- Under torch.distributed each rank computes its part of that sum; gradients, the batch statistics
  and the per-latent fire counts are summed over ranks in one all-reduce, so every rank takes the
  same step as one process would on the global batch.
"""

from __future__ import annotations

import copy
import math

import torch
from torch.autograd import Function

from sae import kernels
from sae.architectures import SAEConfig, SparseAutoencoder
from sae.config import SAESpec, TrainConfig, default_lr
from sae.dist import Dist
from sae.errors import UserError
from sae.optim import ScheduleFreeSignSGD


def _rect(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(Function):
    """z * H(z - theta); d/dz = H(z - theta), d/dtheta = -(theta / eps) K((z - theta) / eps)."""

    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        gz = g * (z > theta).to(z.dtype)
        gt = -(theta / eps) * _rect((z - theta) / eps) * g
        return gz, gt.sum(0), None


class _Step(Function):
    """H(z - theta); d/dz = 0, d/dtheta = -(1 / eps) K((z - theta) / eps)."""

    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        gt = -(1.0 / ctx.eps) * _rect((z - theta) / ctx.eps) * g
        return None, gt.sum(0), None


def geometric_median(x: torch.Tensor, iters: int = 50, tol: float = 1e-5) -> torch.Tensor:
    """Weiszfeld's algorithm, started at the mean (robust to the heavy tails of residuals)."""
    x = x.double()
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(1e-8)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if (y_new - y).norm() <= tol * y.norm().clamp_min(1e-8):
            y = y_new
            break
        y = y_new
    return y.float()


class SAETrainer:
    def __init__(self, spec: SAESpec, train: TrainConfig, d_in: int, index: int, metadata: dict,
                 device: torch.device):
        self.spec, self.cfg, self.device = spec, train, device
        self.sae = SparseAutoencoder(SAEConfig(arch=spec.arch, d_in=d_in, d_sae=spec.d_sae, k=spec.k,
                                               hook_name=spec.hook, metadata=metadata), device=device)
        self.sae.init_weights(torch.Generator().manual_seed(train.seed * 7919 + index))
        params = [self.sae.W_enc, self.sae.b_enc, self.sae.W_dec, self.sae.b_dec]
        self.log_threshold = None
        if spec.arch == "jumprelu":
            self.sae.threshold.requires_grad_(False)
            self.log_threshold = torch.nn.Parameter(
                torch.full((spec.d_sae,), math.log(spec.jumprelu_init_threshold), device=device))
            params.append(self.log_threshold)
        self.params = params
        self.lr = spec.lr or train.lr or default_lr(spec.d_sae, train.optimizer)
        if train.optimizer == "signum":
            self.opt = ScheduleFreeSignSGD(params, lr=self.lr, momentum=train.momentum)
        else:  # fused Adam: one kernel per step on CPU and CUDA (deterministic, checkpointable like the default)
            self.opt = torch.optim.Adam(params, lr=self.lr, betas=tuple(train.betas), eps=train.eps,
                                        fused=device.type in ("cpu", "cuda"))
        self.scale = 1.0
        self.initialized = False
        self.step_n = 0
        self.bad_steps = 0
        self.since_fired = torch.zeros(spec.d_sae, dtype=torch.int64, device=device)
        self.thr_ema, self.thr_steps = 0.0, 0  # BatchTopK's inference threshold (bias-corrected EMA)
        self.auxk_k = train.auxk_k or d_in // 2
        self.sparse = train.sparse and spec.arch in ("topk", "batchtopk")

    @property
    def hook(self) -> str:
        return self.spec.hook

    # --- init ---------------------------------------------------------------------------------
    @torch.no_grad()
    def initialize(self, sample: torch.Tensor, d: Dist) -> None:
        """Normaliser and decoder bias from a sample of raw activations (the first global batch),
        computed on rank 0 and broadcast."""
        sample = sample.to(self.device).float()
        vec = torch.zeros(self.sae.cfg.d_in + 1, device=self.device)
        if d.main:
            scale = math.sqrt(self.sae.cfg.d_in) / float(sample.norm(dim=1).mean()) if self.cfg.normalize else 1.0
            x = sample * scale
            init = self.cfg.b_dec_init
            b = (geometric_median(x) if init == "geometric_median" else x.mean(0) if init == "mean"
                 else torch.zeros_like(x[0]))
            vec[0], vec[1:] = scale, b
        d.broadcast(vec)
        self.scale = float(vec[0])
        self.sae.b_dec.copy_(vec[1:])
        for p in self.params:  # the random init too, so every rank starts from rank 0's weights
            d.broadcast(p.data)
        self.initialized = True

    # --- schedule -----------------------------------------------------------------------------
    def lr_at(self, progress: float) -> float:
        c = self.cfg
        mult = min(1.0, (self.step_n + 1) / c.warmup_steps) if c.warmup_steps else 1.0
        if c.optimizer == "adam" and progress > c.decay_start and c.decay_start < 1.0:  # schedule-free: no decay
            frac = min(1.0, (progress - c.decay_start) / (1.0 - c.decay_start))
            mult *= 1.0 - (1.0 - c.lr_end) * frac
        return self.lr * mult

    def dead_mask(self) -> torch.Tensor:
        return self.since_fired >= self.cfg.dead_tokens

    # --- the step -----------------------------------------------------------------------------
    def _loss(self, x: torch.Tensor, total_var: torch.Tensor, n_global: float
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """(loss, {sse, aux, l0_sum}, per-latent fire counts, positive acts for BatchTopK)."""
        sae, spec = self.sae, self.spec
        m = spec.d_sae
        positives = None
        if spec.arch in ("topk", "batchtopk"):
            if self.sparse:
                pre = kernels.pre_acts(x, sae.W_enc, sae.b_enc, sae.b_dec)
                vals, codes = (kernels.topk_codes if spec.arch == "topk" else kernels.batchtopk_codes)(pre, spec.k)
                acts = kernels.encode_at(vals, codes, x, sae.W_enc, sae.b_enc, sae.b_dec).relu()
                x_hat = kernels.decode(acts, codes, sae.W_dec) + sae.b_dec
                counts = codes.counts(acts.detach())
                if spec.arch == "batchtopk":
                    positives = acts.detach()[acts.detach() > 0]
            else:
                pre = sae.pre_acts(x)
                sae.batch_level = True
                f = sae.activation(pre)
                x_hat = sae.decode(f)
                counts = (f.detach() > 0).sum(0)
                positives = f.detach()[f.detach() > 0]
            l0_sum = counts.sum().to(x.dtype)
            sse = (x_hat - x).pow(2).sum()
            loss = sse / total_var
            aux = torch.zeros((), device=x.device)
            dead = self.dead_mask()
            if self.cfg.auxk_coeff > 0 and bool(dead.any()):
                dead_ids = dead.nonzero().squeeze(1)
                k_aux = min(self.auxk_k, dead_ids.numel())
                resid = (x - x_hat).detach()
                sub = pre.detach()[:, dead_ids] if self.sparse else pre[:, dead_ids]
                v, j = sub.topk(k_aux, dim=1, sorted=False)
                if self.sparse:
                    codes_aux = kernels.Codes.from_topk(dead_ids[j], m)
                    a = kernels.encode_at(v.reshape(-1), codes_aux, x, sae.W_enc, sae.b_enc, sae.b_dec).relu()
                    e_hat = kernels.decode(a, codes_aux, sae.W_dec)
                else:
                    dense_aux = torch.zeros(x.shape[0], dead_ids.numel(), device=x.device).scatter(1, j, v.relu())
                    e_hat = dense_aux @ sae.W_dec[dead_ids]
                scale = min(dead_ids.numel() / self.auxk_k, 1.0)
                aux = scale * (e_hat - resid).pow(2).sum() / total_var
                loss = loss + self.cfg.auxk_coeff * aux
            return loss, {"sse": sse.detach(), "aux": aux.detach(), "l0_sum": l0_sum}, counts, positives
        pre = sae.pre_acts(x)
        if spec.arch == "jumprelu":
            theta = self.log_threshold.exp()
            f = _JumpReLU.apply(pre, theta, spec.jumprelu_bandwidth)
            l0 = _Step.apply(pre, theta, spec.jumprelu_bandwidth).sum()
            penalty = spec.l0_coeff * l0
        else:
            f = pre.relu()
            penalty = spec.l1_coeff * (f * sae.W_dec.norm(dim=1)).sum()
        x_hat = sae.decode(f)
        sse = (x_hat - x).pow(2).sum()
        loss = (sse + penalty) / total_var
        counts = (f.detach() > 0).sum(0)
        return loss, {"sse": sse.detach(), "aux": torch.zeros((), device=x.device),
                      "l0_sum": counts.sum().to(x.dtype)}, counts, None

    def step(self, x_raw: torch.Tensor, progress: float, d: Dist) -> dict:
        """One optimizer step on this rank's rows of the global batch. Returns the batch stats."""
        x = x_raw.to(self.device, non_blocking=True).float() * self.scale
        n_local = x.shape[0]
        s1 = torch.cat([x.double().sum(0), torch.tensor([float(n_local)], dtype=torch.float64, device=x.device)])
        d.all_reduce(s1)
        n_global = float(s1[-1])
        mean = (s1[:-1] / n_global).float()
        total_var = d.all_reduce((x - mean).double().pow(2).sum()).float()

        lr = self.lr_at(progress)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss, stats, counts, positives = self._loss(x, total_var, n_global)
        loss.backward()

        # one all-reduce: gradients, per-latent fire counts, batch stats
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        bad_flag = torch.zeros((), device=x.device) if torch.isfinite(loss) else torch.ones((), device=x.device)
        scalars = torch.stack([stats["sse"].float(), stats["aux"].float(), stats["l0_sum"].float(), bad_flag])
        flat = torch.cat([g.reshape(-1) for g in grads] + [counts.float(), scalars])
        d.all_reduce(flat)
        off = 0
        for p, g in zip(self.params, grads):
            p.grad = flat[off:off + g.numel()].view_as(g)
            off += g.numel()
        counts = flat[off:off + counts.numel()]
        sse, aux, l0_sum, bad = flat[off + counts.numel():].tolist()

        out = {"loss": sse / float(total_var) + self.cfg.auxk_coeff * aux, "fve": 1.0 - sse / float(total_var),
               "aux": aux, "l0": l0_sum / n_global, "lr": lr, "n": n_global}
        with torch.no_grad():
            W = self.sae.W_dec
            if W.grad is not None:  # keep rows on the unit sphere: drop the radial part of the gradient
                W.grad -= (W.grad * W).sum(1, keepdim=True) * W
            # the global grad norm is non-finite iff some gradient is: one reduction checks and clips
            if self.cfg.grad_clip:
                norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
            else:
                norm = torch.nn.utils.get_total_norm([p.grad for p in self.params])
        if bad != 0 or not math.isfinite(float(norm)):
            self.bad_steps += 1
            self.opt.zero_grad(set_to_none=True)
            if self.bad_steps > self.cfg.max_bad_steps:
                raise UserError(f"SAE {self.spec.name}: {self.bad_steps} steps gave non-finite loss or gradients "
                                f"(train.max_bad_steps={self.cfg.max_bad_steps}); lower train.lr or check the data")
            out["skipped"] = True
            return out

        with torch.no_grad():
            self.opt.step()
            W.div_(W.norm(dim=1, keepdim=True).clamp_min(1e-12))
            fired = counts > 0
            self.since_fired += int(n_global)
            self.since_fired[fired] = 0
            if self.spec.arch == "batchtopk" and positives is not None:
                lo = torch.tensor([float(positives.min()) if positives.numel() else float("inf")], device=self.device)
                lo = float(d.all_reduce(lo, "min"))
                if math.isfinite(lo):
                    r = self.cfg.batchtopk_threshold_lr
                    self.thr_ema = (1 - r) * self.thr_ema + r * lo
                    self.thr_steps += 1
        self.step_n += 1
        out["dead"] = float(self.dead_mask().float().mean())
        return out

    # --- export / state -------------------------------------------------------------------------
    @torch.no_grad()
    def export(self) -> SparseAutoencoder:
        """A copy for raw activations: the normaliser folded in, BatchTopK/JumpReLU thresholds set."""
        sae = copy.deepcopy(self.sae)
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(self._final(getattr(self.sae, name)))
        if self.spec.arch == "jumprelu":
            sae.threshold.copy_(self._final(self.log_threshold).exp())
        if self.spec.arch == "batchtopk":
            thr = self.thr_ema / (1 - (1 - self.cfg.batchtopk_threshold_lr) ** self.thr_steps) if self.thr_steps else 0.0
            sae.threshold.fill_(thr)
        sae.batch_level = False
        sae.fold_input_scale(self.scale)
        sae.requires_grad_(False)
        return sae.eval()

    def _final(self, p: torch.Tensor) -> torch.Tensor:
        """The weights to evaluate and save: schedule-free's average x, else the parameter itself."""
        return self.opt.averaged(p) if isinstance(self.opt, ScheduleFreeSignSGD) else p.detach()

    def state_dict(self) -> dict:
        return {"params": [p.detach().clone().cpu() for p in self.params], "opt": self.opt.state_dict(),
                "scale": self.scale, "initialized": self.initialized, "step": self.step_n,
                "bad_steps": self.bad_steps, "since_fired": self.since_fired.cpu(),
                "thr_ema": self.thr_ema, "thr_steps": self.thr_steps, "lr": self.lr}

    def load_state_dict(self, s: dict) -> None:
        with torch.no_grad():
            for p, v in zip(self.params, s["params"]):
                p.copy_(v)
        self.opt.load_state_dict(s["opt"])
        self.scale, self.initialized, self.step_n = s["scale"], s["initialized"], s["step"]
        self.bad_steps, self.thr_ema, self.thr_steps = s["bad_steps"], s["thr_ema"], s["thr_steps"]
        self.since_fired = s["since_fired"].to(self.device)
