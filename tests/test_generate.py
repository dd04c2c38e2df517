import pytest
import torch

from blu.errors import BluError
from blu.config import SamplingOptions
from blu.generate import DecodeStep, KVCache, StopStrings, TextGenerator, sample, stream_tokens
from blu.model import RMSNorm, Transformer
from blu.tokenizer import CharTokenizer
from test_model import tiny


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(tiny(n_kv_head=2)).eval()


@pytest.mark.parametrize("vocab_size", [67, 40])  # 40 <= dim: the first layer's q|k|v come from a table
@pytest.mark.parametrize("batch_size", [2, 1])  # one row takes its own RMSNorm path
def test_cached_decoding_equals_the_model_at_every_position(vocab_size, batch_size):
    """Cached equals uncached: the fast forward of generation (folded norm gains and attention
    scale, reordered rotary pairs, grouped-query heads here) computes what the model computes,
    for a prompt, then one token at a time from there to the last position."""
    torch.manual_seed(0)
    model = Transformer(tiny(n_kv_head=2, vocab_size=vocab_size)).eval()
    with torch.no_grad():
        for norm in [m for m in model.modules() if isinstance(m, RMSNorm)]:
            norm.weight.uniform_(0.5, 1.5)  # trained gains, which the step folds into the matrices
    x = torch.randint(1, vocab_size, (batch_size, 32))
    step = DecodeStep(model)
    with torch.no_grad():
        full = model(x)
        cache = KVCache.for_model(model, batch_size=batch_size)
        stepwise = [step(x[:, :3], cache)] + [step(x[:, t : t + 1], cache) for t in range(3, 32)]
        with pytest.raises(ValueError, match="exceeds the context"):
            step(x[:, :1], cache)
        cache.reset()
        step(x[:, :1], cache)
        with pytest.raises(ValueError, match="empty cache"):
            step(x[:, 1:3], cache)
    assert (torch.stack(stepwise, dim=1) - full[:, 2:]).abs().max().item() < 1e-5


def test_positions_beyond_the_context_are_refused(model):
    with pytest.raises(ValueError, match="exceed the context"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_generation_continues_past_the_context(model):
    tokens = list(stream_tokens(model, [1, 2, 3], 200, SamplingOptions(temperature=0)))
    assert len(tokens) == 200  # the context is 32: the cache was refilled several times


def test_past_the_context_each_token_sees_half_to_full_window(model):
    """After a refill, the next logits equal a fresh forward over the last context/2 tokens."""
    prompt = torch.randint(1, 67, (40,)).tolist()
    tokens = list(stream_tokens(model, prompt, 1, SamplingOptions(temperature=0)))
    with torch.no_grad():
        expected = model(torch.tensor([prompt[-32:]]))[0, -1].argmax().item()
    assert tokens == [expected]


def test_top_k_1_and_tiny_top_p_are_greedy():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    greedy = logits.argmax(-1)
    g = torch.Generator().manual_seed(0)
    assert (sample(logits, SamplingOptions(1.0, top_k=1), g) == greedy).all()
    assert (sample(logits, SamplingOptions(1.0, top_p=1e-6), g) == greedy).all()
    assert (sample(logits, SamplingOptions(0.0), g) == greedy).all()


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    drawn = {int(sample(logits, SamplingOptions(1.0, top_p=0.8), g)) for _ in range(300)}
    assert drawn == {0, 1}


@pytest.mark.parametrize("top_p, expected", [(1.0, [0.5, 0.3, 0.15, 0.05]), (0.8, [0.625, 0.375, 0, 0])])
def test_samples_follow_the_distribution(top_p, expected):
    """The draw (an exponential race) picks each token as often as its probability after
    top-p renormalises the kept set; within 4 standard errors of 20,000 draws."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(20_000, -1)
    drawn = sample(logits, SamplingOptions(1.0, top_p=top_p), torch.Generator().manual_seed(0))
    share = torch.bincount(drawn, minlength=4) / len(drawn)
    assert torch.allclose(share, torch.tensor(expected), atol=4 * (0.25 / len(drawn)) ** 0.5)
    assert share[torch.tensor(expected) == 0].sum() == 0


def test_same_seed_same_text_and_unknown_prompt_characters(model):
    tokenizer = CharTokenizer([chr(ord("a") + i) for i in range(66)])
    run = TextGenerator(model, tokenizer)
    a = "".join(run.generate("abc\u2603", 50, seed=3))
    b = "".join(run.generate("abc", 50, seed=3))
    assert a == b and len(a) == 50
    assert run.unknown_chars("abc\u2603") == ["\u2603"]
    assert "".join(run.generate("", 10, temperature=0)) == "".join(run.generate("", 10, temperature=0))


@pytest.mark.parametrize("options", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-2), dict(max_new_tokens=-1)])
def test_bad_sampling_values(model, options):
    run = TextGenerator(model, CharTokenizer([chr(ord("a") + i) for i in range(66)]))
    with pytest.raises(BluError):
        list(run.generate("ab", **options))


def test_min_p_drops_unlikely_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    drawn = {int(sample(logits, SamplingOptions(1.0, min_p=0.5), g)) for _ in range(300)}
    assert drawn == {0, 1}  # 0.15 and 0.05 are below 0.5 x 0.5


def test_repetition_penalty_as_defined():
    recent = torch.tensor([[0]])
    for logits, expected in (([2.0, 1.5, -3.0], 1), ([-1.0, -1.5, -3.0], 1), ([2.0, 0.5, -3.0], 0)):
        options = SamplingOptions(0.0, repetition_penalty=2.0)
        assert int(sample(torch.tensor([logits]), options, None, recent)) == expected
    assert int(sample(torch.tensor([[2.0, 1.5]]), SamplingOptions(0.0), None, recent)) == 0  # off by default


def test_stop_strings_hold_back_only_possible_starts():
    stops = StopStrings(["\n\n", "END"])
    assert stops.feed("Hello E") == "Hello "  # "E" may begin "END"
    assert stops.feed("ve") == "Eve"
    assert stops.feed("ning\n") == "ning"
    assert stops.feed("\nmore") == "" and stops.stopped
    assert stops.flush() == ""
    open_ended = StopStrings(["END"])
    assert open_ended.feed("the EN") == "the " and open_ended.flush() == "EN"


def test_generate_stops_before_the_stop_string(model):
    run = TextGenerator(model, CharTokenizer([chr(ord("a") + i) for i in range(66)]))
    full = "".join(run.generate("abc", 120, temperature=0))
    stop = full[60:63]
    cut = "".join(run.generate("abc", 120, temperature=0, stop=[stop]))
    assert cut == full[: full.index(stop)]


def test_batched_samples(model):
    run = TextGenerator(model, CharTokenizer([chr(ord("a") + i) for i in range(66)]))
    texts = run.generate_many("abc", num_samples=4, max_new_tokens=80, seed=5, temperature=1.0)
    assert len(texts) == 4 and all(len(t) == 80 for t in texts) and len(set(texts)) == 4
    assert run.generate_many("abc", num_samples=4, max_new_tokens=80, seed=5, temperature=1.0) == texts
    greedy = run.generate_many("abc", num_samples=2, max_new_tokens=80, temperature=0)
    assert greedy == ["".join(run.generate("abc", 80, temperature=0))] * 2


@pytest.mark.parametrize("options", [dict(min_p=1.0), dict(repetition_penalty=0), dict(repetition_window=0),
                                     dict(temperature=float("nan"))])
def test_more_bad_sampling_values(model, options):
    run = TextGenerator(model, CharTokenizer([chr(ord("a") + i) for i in range(66)]))
    with pytest.raises(BluError):
        run.generate("ab", **options)
