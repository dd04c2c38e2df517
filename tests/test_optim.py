"""The optimizers and the schedule: Muon's orthogonalized steps, its AdamW half, warmup-stable-decay."""

import pytest
import torch

from blu.config import ModelConfig, TrainConfig
from blu.model import Transformer
from blu.optim import MuonAdamW, learning_rate, make_optimizer, orthogonalize


def test_schedule_warms_up_holds_then_decays_over_the_cooldown():
    """The learning rate warms up, holds, then decays linearly over the cooldown to lr x min_lr_ratio,
    ending decayed even for a budget shorter than the warmup."""
    config = TrainConfig(lr=1.0, warmup_iters=10, min_lr_ratio=0.1, cooldown=0.4, iters=100)
    assert learning_rate(config, 0, 0.0) == pytest.approx(0.1)
    assert learning_rate(config, 9, 0.09) == pytest.approx(1.0)
    assert learning_rate(config, 60, 0.6) == pytest.approx(1.0)  # stable until the last 40%
    assert learning_rate(config, 80, 0.8) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway down
    assert learning_rate(config, 100, 1.0) == pytest.approx(0.1)
    assert learning_rate(config, 3, 1.0) <= 0.1  # a budget shorter than the warmup still ends decayed
    whole_run = TrainConfig(lr=1.0, warmup_iters=0, cooldown=1.0, iters=100)
    assert learning_rate(whole_run, 50, 0.5) == pytest.approx(0.1 + 0.9 * 0.5)


@pytest.mark.parametrize("shape", [(32, 96), (96, 32), (40, 40)])
def test_orthogonalize_brings_every_singular_value_near_one(shape):
    """Muon's Newton-Schulz iteration maps every singular value, from 10 down to 0.03, into the
    quintic's band around 1, for wide, tall and square matrices."""
    generator = torch.Generator().manual_seed(0)
    u, _, v = torch.linalg.svd(torch.randn(shape, generator=generator), full_matrices=False)
    spread = torch.logspace(1, -1.5, min(shape))  # singular values from 10 down to 0.03
    singular_values = torch.linalg.svdvals(orthogonalize(u @ torch.diag(spread) @ v))
    assert singular_values.min() > 0.6 and singular_values.max() < 1.25  # the quintic's band, not exactly 1


def test_muon_groups_orthogonalize_each_part_of_a_fused_weight():
    """A fused weight (q|k|v, gate|up) is orthogonalized part by part, as separate matrices would be,
    with the shape-scaled step."""
    weight = torch.nn.Parameter(torch.zeros(6, 4))
    weight.grad = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    optimizer = MuonAdamW([{"params": [weight], "muon": True}], lr=0.1, momentum=0.0, parts={weight: [2, 4]})
    optimizer.step()
    for part, grad in zip(weight.detach().split([2, 4]), weight.grad.split([2, 4])):
        expected = -0.1 * 0.2 * max(part.shape) ** 0.5 * orthogonalize(grad)
        torch.testing.assert_close(part, expected)


def test_the_adamw_groups_step_exactly_like_torch_adamw():
    """The AdamW half of MuonAdamW steps exactly as torch.optim.AdamW: a drifting reimplementation
    would change every run."""
    torch.manual_seed(0)
    ours = torch.nn.Parameter(torch.randn(5, 3))
    theirs = torch.nn.Parameter(ours.detach().clone())
    mine = MuonAdamW([{"params": [ours], "weight_decay": 0.1}], lr=0.01, betas=(0.9, 0.95))
    reference = torch.optim.AdamW([theirs], lr=0.01, betas=(0.9, 0.95), weight_decay=0.1, eps=1e-8)
    for _ in range(5):
        grad = torch.randn(5, 3)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        mine.step()
        reference.step()
    torch.testing.assert_close(ours, theirs)


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    """Muon gets the 2-D matrices inside the blocks (with the fused qkv split by heads); embeddings,
    head and norms go to AdamW."""
    model = Transformer(ModelConfig(vocab_size=10, dim=16, n_layer=2, n_head=2, n_kv_head=1, hidden_dim=32, context=8))
    optimizer = make_optimizer(model, TrainConfig(optimizer="muon", iters=1), torch.device("cpu"))
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in optimizer.param_groups if g["muon"] for p in g["params"]}
    assert muon == {n for n, p in model.named_parameters() if p.dim() == 2 and n.startswith("layers.")}
    assert "tok_embeddings.weight" not in muon and "output.weight" not in muon
    qkv = model.layers[0].attention.qkv_proj.weight
    assert optimizer.parts[qkv] == [16, 8, 8]  # q | k | v with 2 query heads and 1 key/value head
