"""The model against its definition and against transformers' LlamaForCausalLM."""

import math

import pytest
import torch
import torch.nn.functional as F

from blu.config import PRESETS, ModelConfig
from blu.export import to_transformers
from blu.model import Transformer


def test_seed_preset_is_the_original_blu():
    """The seed preset has the original Blu's 2,657,536 parameters on tiny Shakespeare's vocabulary."""
    config = ModelConfig(**{**PRESETS["seed"].model.__dict__, "vocab_size": 66})  # 65 characters + <unk>
    assert Transformer(config).num_parameters() == 2_657_536  # the original's 2.66M


def test_causality(tiny):
    """A position's logits never depend on later tokens: a leak would make training look good and
    generation bad."""
    torch.manual_seed(0)
    model = Transformer(tiny()).eval()
    x = torch.randint(0, 67, (2, 20))
    changed = x.clone()
    changed[:, 12:] = torch.randint(0, 67, (2, 8))
    with torch.no_grad():
        a, b = model(x), model(changed)
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-6)
    assert not torch.allclose(a[:, 12:], b[:, 12:], atol=1e-3)


def test_dropout_acts_in_training_only(tiny):
    """Dropout changes the output in training mode and not at all in eval mode."""
    torch.manual_seed(0)
    plain, dropping = Transformer(tiny()), Transformer(tiny(dropout=0.3))
    dropping.load_state_dict(plain.state_dict())
    x = torch.randint(0, 67, (2, 16))
    with torch.no_grad():
        assert not torch.allclose(dropping.train()(x), plain.train()(x), atol=1e-3)
        torch.testing.assert_close(dropping.eval()(x), plain.eval()(x))


def test_initial_loss_is_about_ln_vocab(tiny):
    """A fresh model predicts about uniformly (loss near ln of the vocabulary): a bad initialisation
    shows here."""
    torch.manual_seed(0)
    model = Transformer(tiny(vocab_size=65))
    x = torch.randint(0, 65, (8, 32))
    loss = F.cross_entropy(model(x).flatten(0, 1), torch.roll(x, -1, 1).flatten())
    assert abs(loss.item() - math.log(65)) < 0.1


def test_overfits_one_batch(tiny):
    """The model and its gradients can memorise one batch: the basic check that it learns at all."""
    torch.manual_seed(0)
    model = Transformer(tiny())
    x = torch.randint(0, 67, (4, 32))
    y = torch.randint(0, 67, (4, 32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
@pytest.mark.parametrize("tie", [False, True])
def test_logits_match_transformers(n_kv_head, tie, tiny):
    """The same weights in transformers' LlamaForCausalLM give the same logits (grouped-query and tied
    heads too): what makes export a rename."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = tiny(n_kv_head=n_kv_head, tie_embeddings=tie, rope_theta=500.0)
    model = Transformer(config).eval()
    with torch.no_grad():  # random norm scales, so a mistake in RMSNorm cannot hide behind ones
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    hf = to_transformers(model)
    assert isinstance(hf, transformers.LlamaForCausalLM)
    if tie:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    x = torch.randint(0, 67, (2, 32))
    with torch.no_grad():
        ours, theirs = model(x), hf(x).logits
    assert (ours - theirs).abs().max().item() < 1e-4
