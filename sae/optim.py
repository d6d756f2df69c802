"""Schedule-free sign descent ("signum"), the optimizer EleutherAI sparsify trains TopK SAEs with.

Why it is here: on a few hundred steps (a CPU budget) it reaches a markedly better FVE than Adam
with warm-up and decay on the same batches (scripts/bench_train.py measures both). It is
schedulefree's ScheduleFreeWrapper(SignSGD, momentum) (Defazio et al. 2024) written out in one
class, so its state is an ordinary optimizer state_dict (checkpoint and bitwise resume unchanged).

Three sequences per parameter: z (the sign-descent iterate), x (the lr^2-weighted average of z, the
weights to evaluate and save) and y = (1 - beta) z + beta x (where gradients are taken). In train
mode the parameter holds y; `averaged(p)` gives x.
"""

from __future__ import annotations

import torch


class ScheduleFreeSignSGD(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.95, weight_lr_power: float = 2.0):
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"momentum must be in (0, 1), got {momentum}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_lr_power": weight_lr_power,
                                  "lr_max": 0.0, "weight_sum": 0.0})

    @torch.no_grad()
    def step(self, closure=None):
        assert closure is None, "closure is not supported"
        for g in self.param_groups:
            lr, beta = g["lr"], g["momentum"]
            g["lr_max"] = lr_max = max(lr, g["lr_max"])
            weight = lr_max ** g["weight_lr_power"]
            g["weight_sum"] += weight
            c = weight / g["weight_sum"] if g["weight_sum"] > 0 else 1.0
            for p in g["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if "z" not in st:
                    st["z"] = p.detach().clone()
                z = st["z"]
                x = p.lerp(z, 1.0 - 1.0 / beta)  # recover x from y = (1-beta) z + beta x
                z.add_(p.grad.sign(), alpha=-lr)
                x.lerp_(z, c)
                p.copy_(x.lerp_(z, 1.0 - beta))
        return None

    @torch.no_grad()
    def averaged(self, p: torch.Tensor) -> torch.Tensor:
        """x for parameter p (a new tensor): the weights to evaluate and save."""
        st = self.state.get(p, {})
        if "z" not in st:
            return p.detach().clone()
        beta = next(g["momentum"] for g in self.param_groups if any(q is p for q in g["params"]))
        return p.detach().lerp(st["z"], 1.0 - 1.0 / beta)
