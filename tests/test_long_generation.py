"""Text of any length: a small model trained on tiny Shakespeare keeps its quality past its context."""

import pytest
import torch

from blu.config import Budget, TextSettings
from blu.evaluate import position_buckets, stream_eval, stream_losses
from blu.generate import TextGenerator
from blu.runs import create_run, load_run
from blu.train import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shakespeare):
    """A char model trained 250 steps on tiny Shakespeare (context 32), its tokenizer and validation tokens."""
    run = create_run(tmp_path_factory.mktemp("run"), TextSettings(data=str(shakespeare), tokenizer="char"), preset="cpu",
                     budget=Budget(iters=250), device="cpu",
                     overrides=dict(dim=64, n_layer=2, n_head=4, n_kv_head=4, hidden_dim=192, context=32,
                                    batch_size=32, lr=4e-3, warmup_iters=20, eval_every=1000, sample_chars=0))
    state, _ = train(run, torch.device("cpu"), log=lambda m: None)
    assert state.best_val_loss < 2.4
    _, model, tokenizer = load_run(run.folder)
    val_tokens = run.val_tokens
    return model, tokenizer, val_tokens


def test_buckets():
    """Position buckets double in width from the first position to `span` contexts (32 x 8 = 256):
    distance past the context on a log scale, with no position left out or counted twice."""
    assert position_buckets(32, 8) == [(1, 16), (16, 32), (32, 64), (64, 128), (128, 256)]


def test_loss_past_the_context_is_no_worse_than_in_its_second_half(trained):
    """Through the generation path, the loss at any distance past the context is no worse (within
    noise) than in the context's second half: the refill rule keeps the model where it was trained."""
    model, _, val_tokens = trained
    rows = stream_eval(model, val_tokens[:40_000], span=8)
    half = rows[1]
    assert rows[0]["loss"] > half["loss"]  # little history is harder: the measurement is sensitive
    for row in rows[2:]:
        # Different buckets hold different text: allow three standard errors of the difference.
        noise = 3 * (row["stderr"] ** 2 + half["stderr"] ** 2) ** 0.5
        assert row["loss"] <= half["loss"] + noise, rows


def test_stream_losses_match_the_plain_forward_inside_the_context(trained):
    """Inside the first context, the streamed losses of the generation path are the model's own."""
    model, _, val_tokens = trained
    x = torch.from_numpy(val_tokens[:33].astype("int64"))[None]
    with torch.no_grad():
        plain = torch.nn.functional.cross_entropy(model(x[:, :-1])[0], x[0, 1:], reduction="none")
    assert torch.allclose(stream_losses(model, x)[0], plain, atol=1e-5)


def test_long_text_does_not_fall_apart(trained):
    """3,000 characters (about 100 contexts) keep the word shape of their start to their end."""
    model, tokenizer, _ = trained
    text = "".join(TextGenerator(model, tokenizer).generate("ROMEO:", 3000, seed=0))
    assert len(text) == 3000

    def spaces_and_letters(part):  # gibberish loses its word shape: spaces and letters in proportion
        return sum(c.isalpha() or c.isspace() for c in part) / len(part)

    assert abs(spaces_and_letters(text[:1000]) - spaces_and_letters(text[-1000:])) < 0.05
