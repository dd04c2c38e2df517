"""Generation: the fast decoder against the model, rows at different positions, the rule past
the context, sampling, stop strings and the text API."""

import pytest
import torch
from torch.overrides import TorchFunctionMode

from blu.config import SamplingOptions
from blu.decode import DecodeBatch, Decoder, KVCache
from blu.errors import BluError
from blu.generate import StopStrings, TextGenerator, stream_tokens
from blu.model import RMSNorm, Transformer
from blu.sampling import sample
from blu.tokenizers import CharTokenizer


@pytest.fixture(scope="module")
def model(tiny):
    torch.manual_seed(0)
    return Transformer(tiny(n_kv_head=2)).eval()


def trained_looking(model):
    """Random norm gains, as training leaves them: the decoder folds them into its matrices,
    so a mistake there cannot hide behind gains of 1."""
    with torch.no_grad():
        for norm in [m for m in model.modules() if isinstance(m, RMSNorm)]:
            norm.weight.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("first_layer_table", [True, False])
@pytest.mark.parametrize("batch_size", [2, 1])  # one row takes its own RMSNorm path
def test_cached_decoding_equals_the_model_at_every_position(tiny, first_layer_table, batch_size):
    """Cached equals uncached: the fast forward of generation (folded norm gains and attention
    scale, reordered rotary pairs, grouped-query heads here, the first layer by table or not)
    computes what the model computes, for a prompt, then one token at a time to the last position."""
    torch.manual_seed(0)
    model = trained_looking(Transformer(tiny(n_kv_head=2)).eval())
    x = torch.randint(1, 67, (batch_size, 32))
    decoder = Decoder(model, first_layer_table=first_layer_table)
    assert (decoder.weights.first_qkv is not None) == first_layer_table
    with torch.no_grad():
        full = model(x)
        cache = KVCache.for_model(model, rows=batch_size)
        stepwise = [decoder.prefill(x[:, :3], cache)] + [decoder.step(x[:, t], cache) for t in range(3, 32)]
        with pytest.raises(ValueError, match="exceeds the context"):
            decoder.step(x[:, 0], cache)
        with pytest.raises(ValueError, match="exceeds the context"):
            decoder.prefill(torch.zeros(1, 33, dtype=torch.long), cache)
    assert (torch.stack(stepwise, dim=1) - full[:, 2:]).abs().max().item() < 1e-5


def reference_windows(model, rows: list[list[int]], prompt_lengths: list[int]) -> torch.Tensor:
    """The logits after each row's tokens from a fresh forward over the window the rule past
    the context gives it: the prompt's last `context` tokens; then, each time the window is
    full when a token arrives, the last context/2 tokens with that token."""
    context, keep = model.config.context, model.config.context // 2
    logits = []
    for tokens, prompt_length in zip(rows, prompt_lengths):
        window = list(tokens[:prompt_length][-context:])
        for token in tokens[prompt_length:]:
            window = (window + [token])[-keep:] if len(window) == context else window + [token]
        with torch.no_grad():
            logits.append(model(torch.tensor([window]))[0, -1])
    return torch.stack(logits)


def test_rows_join_leave_and_refill_each_at_its_own_time(tiny):
    """What a server needs: a row's prompt is filled while another row is half-way through its
    context, the rows then step together at different positions, each refills past the context
    at its own time, and a row that leaves hands its slot to the last row. Every step's logits
    equal a fresh forward over the window the rule past the context gives each row."""
    torch.manual_seed(0)
    model = trained_looking(Transformer(tiny(n_kv_head=2)).eval())
    batch = DecodeBatch(Decoder(model), capacity=3)
    texts = [torch.randint(1, 67, (5,)).tolist()]
    prompts = [5]  # prompt length of each row
    batch.add(torch.tensor(texts))
    worst = 0.0
    for step in range(120):
        if step == 11:  # a second text joins while the first is at position 16
            texts.append(torch.randint(1, 67, (3,)).tolist())
            prompts.append(3)
            batch.add(torch.tensor(texts[-1:]))
        if step == 30:
            texts.append(torch.randint(1, 67, (40,)).tolist())  # longer than the context
            prompts.append(40)
            batch.add(torch.tensor(texts[-1:]))
        if step == 70:  # the first text leaves: the last takes its row
            batch.remove(0)
            texts, prompts = [texts[2], texts[1]], [prompts[2], prompts[1]]
        tokens = torch.randint(1, 67, (len(texts),))
        for text, token in zip(texts, tokens.tolist()):
            text.append(token)
        logits = batch.step(tokens)
        worst = max(worst, (logits - reference_windows(model, texts, prompts)).abs().max().item())
        assert len(batch) == len(texts)
    assert worst < 1e-4
    assert len(set(batch.cache.lengths[:2])) == 2  # the two rows really were at different positions


def test_past_the_context_each_token_sees_half_to_full_window(model):
    """Generation past the context (every row refilling at once, as in `blu generate`): the
    logits after each refill equal a fresh forward over the last context/2 tokens, and every
    step's logits equal the forward over its window."""
    torch.manual_seed(1)
    prompt = torch.randint(1, 67, (2, 20))
    texts = prompt.tolist()
    batch = DecodeBatch(Decoder(model), capacity=2)
    batch.add(prompt)
    for _ in range(100):
        tokens = torch.randint(1, 67, (2,))
        for text, token in zip(texts, tokens.tolist()):
            text.append(token)
        logits = batch.step(tokens)
        if batch.cache.lengths[0] == 16:  # just refilled: 16 = context/2 tokens in the cache
            with torch.no_grad():
                fresh = model(torch.tensor([text[-16:] for text in texts]))[:, -1]
            assert (logits - fresh).abs().max().item() < 1e-4
        assert (logits - reference_windows(model, texts, [20, 20])).abs().max().item() < 1e-4
    assert len(texts[0]) == 120  # several refills of a 32-token context


def test_positions_beyond_the_context_are_refused(model):
    with pytest.raises(ValueError, match="exceed the context"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_generation_continues_past_the_context(model):
    tokens = list(stream_tokens(model, [1, 2, 3], 200, SamplingOptions(temperature=0)))
    assert len(tokens) == 200  # the context is 32: the cache was refilled several times


class DtypeLog(TorchFunctionMode):
    """Records the dtype of every tensor a torch function returns."""

    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(item, torch.Tensor):
                self.dtypes.add(item.dtype)
        return out


@pytest.mark.parametrize("temperature", [1.0, 1e-300])
def test_sampling_never_uses_float64(temperature):
    """MPS has no float64: every sampling control must run in float32 (a tiny temperature
    included, which must neither overflow nor produce NaN)."""
    logits = torch.randn(3, 50)
    options = SamplingOptions(temperature, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.3)
    with DtypeLog() as log:
        token = sample(logits, options, torch.Generator().manual_seed(0), torch.tensor([[1, 2]] * 3))
    assert torch.float64 not in log.dtypes and torch.float32 in log.dtypes
    if temperature < 1e-30:
        assert torch.equal(token, logits.argmax(-1))


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


@pytest.mark.parametrize("options", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-2),
                                     dict(max_new_tokens=-1)])
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
