"""Generation: the fast decoder against the model, rows at different positions, the rule past
the context, sampling, the token-to-text stream (stop strings, end of text, the token limit)
and the text API."""

import copy

import pytest
import torch
from torch.overrides import TorchFunctionMode

from blu.config import SamplingOptions
from blu.decode import DecodeBatch, Decoder, KVCache
from blu.errors import BluError
from blu.fold import column_blocks, product
from blu.generate import TextGenerator, stream_tokens
from blu.model import RMSNorm, Transformer
from blu.sampling import draw, nucleus_candidates, sample
from blu.text_stream import StopStrings, TextStream
from blu.tokenizers import CharTokenizer
from blu.tokenizers.bytelevel import byte_tokenizer

LETTERS = CharTokenizer([chr(ord("a") + i) for i in range(66)])  # 66 characters and <unk>: the tiny model's 67


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
        cache = KVCache(model.config, batch_size, "cpu", torch.float32)
        stepwise = [decoder.prefill(x[:, :3], cache)] + [decoder.step(x[:, t], cache) for t in range(3, 32)]
        with pytest.raises(ValueError, match="exceeds the context"):
            decoder.step(x[:, 0], cache)
        with pytest.raises(ValueError, match="exceeds the context"):
            decoder.prefill(torch.zeros(1, 33, dtype=torch.long), cache)
    assert (torch.stack(stepwise, dim=1) - full[:, 2:]).abs().max().item() < 1e-5


@pytest.mark.parametrize("rows", [1, 3])
def test_column_blocks_compute_the_product(rows):
    """The layout that shares one row's product over the threads gives x @ w (and add + x @ w)
    for one row and for several, for wide and narrow outputs, and leaves small matrices alone."""
    torch.manual_seed(0)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for shape in [(128, 4096), (1024, 256)]:
            w = torch.randn(shape)
            blocked = column_blocks(w)
            assert blocked.dim() == 3 and blocked.shape[0] == (2 if shape[1] >= 2048 else shape[1] // 32)
            x, add = torch.randn(rows, shape[0]), torch.randn(rows, shape[1])
            assert torch.allclose(product(x, blocked), x @ w, atol=1e-4)
            assert torch.allclose(product(x, blocked, add=add), add + x @ w, atol=1e-4)
        assert column_blocks(torch.randn(64, 96)).dim() == 2
        torch.set_num_threads(1)
        assert column_blocks(torch.randn(128, 4096)).dim() == 2  # one thread: one mm reads the head as fast
        assert column_blocks(torch.randn(256, 2048)).shape == (64, 256, 32)  # but not gate|up's width
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("batch_size,threads", [(2, 2), (1, 2), (1, 1)])
def test_decoding_with_column_blocks_equals_the_model(tiny, batch_size, threads):
    """A model whose feed-forward matrices are large enough to be split in column blocks (wide
    gate|up, narrow down; with one thread both 32 columns wide) decodes what the model computes,
    at one position for all rows and with rows at their own positions."""
    torch.manual_seed(0)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = trained_looking(Transformer(tiny(dim=256, hidden_dim=1024, n_kv_head=2)).eval())
        decoder = Decoder(model)
    finally:
        torch.set_num_threads(previous)
    assert [w.dim() for w in decoder.weights.layers[0]] == [2, 2, 3, 3]
    x = torch.randint(1, 67, (batch_size, 32))
    with torch.no_grad():
        full = model(x)
        cache = KVCache(model.config, batch_size, "cpu", torch.float32)
        stepwise = [decoder.prefill(x[:, :3], cache)] + [decoder.step(x[:, t], cache) for t in range(3, 20)]
        if batch_size == 2:  # the second row one position behind: the path of rows at their own positions
            decoder.prefill(x[1:, :19], cache, first_row=1)
            mixed = decoder.step(torch.stack((x[0, 20], x[1, 19])), cache)
            assert (mixed - torch.stack((model(x[:1, :21])[0, -1], full[1, 19]))).abs().max().item() < 1e-4
    assert (torch.stack(stepwise, dim=1) - full[:, 2:20]).abs().max().item() < 1e-4


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
    refills = 0
    for _ in range(100):
        tokens = torch.randint(1, 67, (2,))
        for text, token in zip(texts, tokens.tolist()):
            text.append(token)
        logits = batch.step(tokens)
        if batch.cache.lengths[0] == 16:  # just refilled: 16 = context/2 tokens in the cache
            refills += 1
            with torch.no_grad():
                fresh = model(torch.tensor([text[-16:] for text in texts]))[:, -1]
            assert (logits - fresh).abs().max().item() < 1e-4
        assert (logits - reference_windows(model, texts, [20, 20])).abs().max().item() < 1e-4
    assert refills == 6  # at steps 13, 30, 47, 64, 81 and 98: full at 32 tokens, refilled to 16


def test_positions_beyond_the_context_are_refused(model):
    """The reference model refuses positions it has no rotary angles for, rather than wrapping."""
    with pytest.raises(ValueError, match="exceed the context"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_generation_continues_past_the_context(model):
    """stream_tokens far past the 32-token context: each greedy token is the likeliest after a
    fresh forward over the window the rule past the context gives it (a refill that kept the
    wrong tokens, or none, would change them)."""
    tokens = list(stream_tokens(model, [1, 2, 3], 100, SamplingOptions(temperature=0)))
    text = [1, 2, 3] + tokens
    expected = [int(reference_windows(model, [text[: 3 + i]], [3]).argmax()) for i in range(len(tokens))]
    assert tokens == expected


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
    """top-k 1, a top-p below any probability and temperature 0 all give the argmax."""
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    greedy = logits.argmax(-1)
    g = torch.Generator().manual_seed(0)
    assert (sample(logits, SamplingOptions(1.0, top_k=1), g) == greedy).all()
    assert (sample(logits, SamplingOptions(1.0, top_p=1e-6), g) == greedy).all()
    assert (sample(logits, SamplingOptions(0.0), g) == greedy).all()


def test_top_p_keeps_the_smallest_set_reaching_p():
    """top-p 0.8 over 0.5, 0.3, 0.15, 0.05 keeps the first two only (0.5 alone falls short)."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    drawn = {int(sample(logits, SamplingOptions(1.0, top_p=0.8), g)) for _ in range(300)}
    assert drawn == {0, 1}


@pytest.mark.parametrize("spreads", [[4.0], [3.0], [1.0], [4.0, 3.0], [4.0, 3.0, 0.01]])
def test_the_top_p_set_from_the_largest_candidates_is_the_sorted_one(spreads):
    """nucleus_candidates tries the top 256, then 4,096, before sorting the vocabulary: each row's
    kept set is the one a full sort gives, whichever stage holds it (spreads 4, 3 and 1 keep 67,
    888 and 12,252 of 20,000 tokens at top-p 0.9), alone and in batches of rows needing each."""
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(len(spreads), 20_000) * torch.tensor(spreads)[:, None], dim=-1)
    values, ids, cumulative, total = nucleus_candidates(probs, 0.9)
    ordered, order = probs.sort(dim=-1, descending=True)
    expected_kept = (ordered.cumsum(-1) - ordered < 0.9 * ordered.sum(-1, keepdim=True)).sum(-1)
    kept = (cumulative - values < 0.9 * total).sum(-1)
    assert kept.tolist() == expected_kept.tolist()
    assert values.shape[1] == {4.0: 256, 3.0: 4096}.get(min(spreads), 20_000)
    for row in range(len(spreads)):
        n = int(kept[row])
        assert set(ids[row, :n].tolist()) == set(order[row, :n].tolist())


def test_the_draw_never_picks_a_zero_weight():
    """Zero weights before, between and after the positive ones are never drawn, even by the
    largest uniform numbers (u * total rounding up to the total), one generator or one per row."""
    weights = torch.tensor([[0.0, 1e-3, 0.0, 2.0, 0.0, 0.0]]).expand(50_000, -1)
    for generator in (torch.Generator().manual_seed(0), [torch.Generator().manual_seed(i) for i in range(50_000)]):
        drawn = torch.bincount(draw(weights, generator), minlength=6)
        assert drawn[[0, 2, 4, 5]].sum() == 0 and drawn[1] > 0
    ones = torch.tensor([[0.0, 3.0, 0.0]])
    assert draw(ones, torch.Generator().manual_seed(0)).item() == 1


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
    """A seed gives the same text again; prompt characters outside the vocabulary are dropped
    (the text is that of the prompt without them) and listed by unknown_chars."""
    run = TextGenerator(model, LETTERS)
    a = "".join(run.generate("abc\u2603", 50, seed=3))
    b = "".join(run.generate("abc", 50, seed=3))
    assert a == b and len(a) == 50
    assert run.unknown_chars("abc\u2603") == ["\u2603"]
    assert "".join(run.generate("", 10, temperature=0)) == "".join(run.generate("", 10, temperature=0))


def test_a_generator_folds_the_weights_again_only_when_they_change(model):
    """TextGenerator keeps its Decoder between calls (each `blu chat` reply would fold a large
    model's weights again), and never answers from weights that changed since: an in-place
    update (an optimizer step) or new tensors (a load) give a new Decoder and the new text."""
    model = copy.deepcopy(model)  # the module's model stays as it is
    run = TextGenerator(model, LETTERS)
    first = run.decoder()
    before = "".join(run.generate("abc", 30, temperature=0))
    assert run.decoder() is first
    with torch.no_grad():
        model.output.weight.mul_(-1)  # in place: the greedy text changes
    after = "".join(run.generate("abc", 30, temperature=0))
    assert run.decoder() is not first and after != before
    assert after == "".join(TextGenerator(model, LETTERS).generate("abc", 30, temperature=0))
    second = run.decoder()
    model.output.weight = torch.nn.Parameter(-model.output.weight.detach())  # a new tensor: back to the first weights
    assert run.decoder() is not second and "".join(run.generate("abc", 30, temperature=0)) == before


@pytest.mark.parametrize("options", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-2),
                                     dict(max_new_tokens=-1), dict(min_p=1.0), dict(repetition_penalty=0),
                                     dict(repetition_window=0), dict(temperature=float("nan"))])
@pytest.mark.parametrize("many", [False, True], ids=["generate", "generate_many"])
def test_bad_sampling_values_are_refused_at_the_call(model, options, many):
    """Each bad value raises BluError when generate is called, before any piece is asked for
    (blu generate checks its flags that way before printing anything), and in generate_many."""
    run = TextGenerator(model, LETTERS)
    with pytest.raises(BluError):
        run.generate_many("ab", 2, **options) if many else run.generate("ab", **options)


def test_min_p_drops_unlikely_tokens():
    """min-p 0.5 drops the tokens below half the likeliest's probability."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    drawn = {int(sample(logits, SamplingOptions(1.0, min_p=0.5), g)) for _ in range(300)}
    assert drawn == {0, 1}  # 0.15 and 0.05 are below 0.5 x 0.5


def test_repetition_penalty_as_defined():
    """A seen token's positive logit is divided by the penalty and a negative one multiplied
    (as transformers does), which can hand the argmax to an unseen token; off by default."""
    recent = torch.tensor([[0]])
    for logits, expected in (([2.0, 1.5, -3.0], 1), ([-1.0, -1.5, -3.0], 1), ([2.0, 0.5, -3.0], 0)):
        options = SamplingOptions(0.0, repetition_penalty=2.0)
        assert int(sample(torch.tensor([logits]), options, None, recent)) == expected
    assert int(sample(torch.tensor([[2.0, 1.5]]), SamplingOptions(0.0), None, recent)) == 0  # off by default


def test_stop_strings_hold_back_only_possible_starts():
    """Streamed text is held back only while it could still begin a stop string, and cut before the first one."""
    stops = StopStrings(["\n\n", "END"])
    assert stops.feed("Hello E") == "Hello "  # "E" may begin "END"
    assert stops.feed("ve") == "Eve"
    assert stops.feed("ning\n") == "ning"
    assert stops.feed("\nmore") == "" and stops.stopped
    assert stops.flush() == ""
    open_ended = StopStrings(["END"])
    assert open_ended.feed("the EN") == "the " and open_ended.flush() == "EN"


def test_generate_stops_before_the_stop_string(model):
    """generate's text ends just before a stop string the model writes, which is not included."""
    run = TextGenerator(model, LETTERS)
    full = "".join(run.generate("abc", 120, temperature=0))
    stop = full[60:63]
    cut = "".join(run.generate("abc", 120, temperature=0, stop=[stop]))
    assert cut == full[: full.index(stop)]


def test_batched_samples(model):
    """generate_many: distinct samples of the full length, the same again for the same seed, and
    greedy rows equal to generate's greedy text."""
    run = TextGenerator(model, LETTERS)
    texts = run.generate_many("abc", num_samples=4, max_new_tokens=80, seed=5, temperature=1.0)
    assert len(texts) == 4 and all(len(t) == 80 for t in texts) and len(set(texts)) == 4
    assert run.generate_many("abc", num_samples=4, max_new_tokens=80, seed=5, temperature=1.0) == texts
    greedy = run.generate_many("abc", num_samples=2, max_new_tokens=80, temperature=0)
    assert greedy == ["".join(run.generate("abc", 80, temperature=0))] * 2


def fed(stream: TextStream, tokens) -> tuple[list[str], list[list[tuple[int, int]]]]:
    """What each feed of `tokens` showed and released (feeding stops once the text has ended)."""
    shown, released = [], []
    for token in tokens:
        shown.append(stream.feed(token))
        released.append(stream.released)
        if stream.reason:
            break
    return shown, released


def test_text_stream_ends_at_the_end_of_text_token_and_never_shows_it():
    """The end-of-text token ends the text ("stop"), counted but never shown, nor anything after
    it; with no end ids it is text like any other token (here: none), and the text ends when the
    caller says ("length")."""
    tokenizer = byte_tokenizer()
    tokens = [*"hi☃".encode(), tokenizer.end_id, *b"x"]
    stream = TextStream(tokenizer)
    shown, _ = fed(stream, tokens)
    assert shown == ["h", "i", "", "", "☃", ""] and stream.reason == "stop" and stream.tokens == 6
    assert stream.feed(ord("y")) == "" and stream.finish() == "" and stream.tokens == 6
    open_ended = TextStream(tokenizer, end_ids=())
    assert "".join(fed(open_ended, tokens)[0]) == "hi☃x" and open_ended.reason is None
    assert open_ended.finish() == "" and open_ended.reason == "length"


def test_text_stream_token_limit_flushes_what_was_held_back():
    """The token that reaches max_tokens ends the text ("length") and brings out what a stop
    string had held back; a stop string ends it ("stop") with nothing of the string shown; a
    character cut off by the end comes out as U+FFFD, as decode() shows it."""
    tokenizer = CharTokenizer("abcdEND")
    stream = TextStream(tokenizer, stop=["END"], max_tokens=5)
    shown, _ = fed(stream, tokenizer.encode("abcENd"))
    assert shown == ["a", "b", "c", "", "EN"] and stream.reason == "length" and stream.tokens == 5
    stream = TextStream(tokenizer, stop=["END"], max_tokens=50)
    assert "".join(fed(stream, tokenizer.encode("abENDcd"))[0]) == "ab" and stream.reason == "stop"
    assert stream.tokens == 5 and stream.finish() == ""
    cut = TextStream(byte_tokenizer(), max_tokens=2)
    assert "".join(fed(cut, [*b"a", 0xE2])[0]) == "a\ufffd" and cut.reason == "length"


def test_text_stream_releases_each_token_with_the_text_it_belongs_to():
    """`released` names each token once its text is all shown, with where that text begins: the
    bytes of one character all begin where the character does, a token held back by a possible
    stop string is released with the text that follows, and a stop string's tokens never are."""
    stream = TextStream(byte_tokenizer(), stop=["b!"])
    shown, released = fed(stream, [*"aé☃b".encode(), *b"c", *b"b!"])
    assert "".join(shown) == "aé☃bc" and stream.reason == "stop"
    assert released == [[(0, 0)], [(1, 1)], [(2, 1)], [(3, 2)], [(4, 2)], [(5, 2)], [], [(6, 3), (7, 4)], [], []]


def test_generating_leaves_the_model_in_its_mode(tiny):
    """TextGenerator does not switch the model it is given to eval mode (training samples from
    the model it trains, which must stay in training mode), and needs no eval mode: with dropout
    on, a model in training mode generates what it generates in eval mode."""
    torch.manual_seed(0)
    model = Transformer(tiny(dropout=0.5)).train()
    training = "".join(TextGenerator(model, LETTERS).generate("abc", 40, temperature=0))
    assert model.training
    model.eval()
    assert "".join(TextGenerator(model, LETTERS).generate("abc", 40, temperature=0)) == training
    assert not model.training


def test_every_token_has_its_own_bytes():
    """tokenizer.token_bytes: a char token's character in UTF-8, <unk> and end-of-text none, a
    byte token its one byte (what log-probabilities report for a token that is part of a character)."""
    chars = CharTokenizer("aé☃")
    assert [chars.token_bytes[i] for i in chars.encode("aé☃")] == [b"a", "é".encode(), "☃".encode()]
    assert chars.token_bytes[chars.unk_id] == b"" and len(chars.token_bytes) == chars.vocab_size
    tokenizer = byte_tokenizer()
    assert tokenizer.token_bytes[0xE2] == b"\xe2" and tokenizer.token_bytes[tokenizer.end_id] == b""
