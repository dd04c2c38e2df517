"""The optimizers and the learning-rate schedule.

AdamW for everything, or Muon for the 2-D weights inside the blocks with AdamW
for the embedding, the head and the norm scales (as in Keller Jordan's Muon).
The schedule is warmup-stable-decay keyed to the spent fraction of the budget,
so a --time run decays over its last seconds whatever the machine's speed."""

import math

import torch

from .config import TrainConfig
from .model import fused_rows

# Newton-Schulz quintic coefficients from Keller Jordan's Muon: they push every
# singular value of the update towards 1 in a few steps.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over `warmup_iters` steps, then the peak lr until the last `cooldown`
    fraction of the budget, over which it falls linearly to lr * min_lr_ratio; `progress` is
    the spent fraction of the step or time budget. Warmup and decay multiply, so even a
    budget shorter than the warmup ends fully decayed."""
    warmup = min(1.0, (step + 1) / config.warmup_iters) if config.warmup_iters else 1.0
    left = 1.0 - min(progress, 1.0)  # fraction of the budget still to run
    decay = min(1.0, left / config.cooldown)
    return config.lr * warmup * (config.min_lr_ratio + (1 - config.min_lr_ratio) * decay)


def orthogonalize(matrix: torch.Tensor) -> torch.Tensor:
    """The nearest semi-orthogonal matrix to `matrix`, roughly (Newton-Schulz iteration).
    bf16 on CUDA; fp32 elsewhere, because CPUs run bf16 matmuls slower (1.1 to 1.8x on
    the test machine, which has AVX-512 bf16 instructions)."""
    x = matrix.to(torch.bfloat16 if matrix.is_cuda else torch.float32)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T  # iterate on the smaller Gram matrix
    x = x / (x.norm() + 1e-7)  # singular values <= 1, where the iteration converges
    a, b, c = NS_COEFFICIENTS
    for _ in range(NS_STEPS):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(matrix.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer (one state_dict, so one checkpoint format) for two kinds of groups:
    groups with `muon=True` take Nesterov momentum, orthogonalized, scaled to AdamW's update size
    (0.2 * sqrt(max(rows, cols)), Moonshot's rule) so that one --lr serves both kinds;
    the others are plain AdamW. Weight decay is decoupled in both."""

    def __init__(self, groups, lr: float, betas=(0.9, 0.95), momentum: float = 0.95, eps: float = 1e-8, parts=None):
        super().__init__(groups, dict(lr=lr, betas=betas, momentum=momentum, eps=eps, weight_decay=0.0, muon=False))
        # A fused weight (q|k|v, gate|up) is several matrices: each part is orthogonalized on its own.
        self.parts = parts or {}

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.mul_(1 - group["lr"] * group["weight_decay"])
                if group["muon"]:
                    self._muon_update(p, group)
                else:
                    self._adamw_update(p, group)

    def _muon_update(self, p, group):
        state = self.state[p]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(p)
        buffer = state["momentum_buffer"]
        buffer.lerp_(p.grad, 1 - group["momentum"])
        nesterov = p.grad.lerp(buffer, group["momentum"])
        rows = self.parts.get(p, [p.size(0)])  # no parts given: the whole matrix
        for weight, update in zip(p.split(rows), nesterov.split(rows)):  # views: adding to them updates p
            scale = 0.2 * math.sqrt(max(weight.shape))
            weight.add_(orthogonalize(update), alpha=-group["lr"] * scale)

    def _adamw_update(self, p, group):
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        step = state["step"].item()
        state["exp_avg"].lerp_(p.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        denominator = (state["exp_avg_sq"] / (1 - beta2**step)).sqrt_().add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denominator, value=-group["lr"] / (1 - beta1**step))


def make_optimizer(model, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on the 2-D weights only (not on the norm scales); or, with
    --optimizer muon, Muon for the matrices inside the blocks and AdamW for the rest."""
    betas = (config.beta1, config.beta2)
    if config.optimizer == "muon":
        rows = fused_rows(model.config)
        hidden, outer, norms, parts = [], [], [], {}
        for name, p in model.named_parameters():
            if p.dim() < 2:
                norms.append(p)
            elif name.startswith("layers."):
                hidden.append(p)
                module = name.split(".")[-2]  # e.g. qkv_proj in layers.0.attention.qkv_proj.weight
                if module in rows:  # a fused weight: orthogonalize each of its parts
                    parts[p] = rows[module]
            else:
                outer.append(p)  # the embedding and the output head
        groups = [{"params": hidden, "weight_decay": config.weight_decay, "muon": True},
                  {"params": outer, "weight_decay": config.weight_decay},
                  {"params": norms, "weight_decay": 0.0}]
        return MuonAdamW(groups, lr=config.lr, betas=betas, parts=parts)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel for all parameters instead of a loop of small operations per tensor.
    return torch.optim.AdamW(groups, lr=config.lr, betas=betas, fused=device.type in ("cuda", "cpu"))
