"""Prompt log-probabilities from `blu serve` (echo with logprobs), prompts in OpenAI's four forms,
token ids kept exactly as given, and the tokenizer routes, against real server processes on a
char run and a bpe run, checked against blu's own forward (model.py) on the same ids.

The echo answers are read with the openai client's validation off: it types token_logprobs as
a list of floats, while OpenAI's own API (and vLLM, and the issue) give the first prompt token's
as null, since nothing before it predicts it."""

import subprocess
import threading

import httpx
import pytest
from serve_support import Server, server_fixture, train_command
import torch

import blu
from blu.config import SamplingOptions
from blu.serve.engine import Engine
from blu.serve.events import Finish, Job, PromptScores

server = server_fixture("--max-batch", "16")


@pytest.fixture(scope="module")
def local(served_run):
    return blu.load(served_run)


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory, shakespeare):
    """A tiny byte-level BPE run (300 tokens): merges to make seams, bytes to split a character."""
    folder = tmp_path_factory.mktemp("bpe-run")
    data = folder / "plays.txt"
    data.write_text(shakespeare.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    command = train_command(data, folder / "plays", 20, 20) + ["--tokenizer", "bpe", "--vocab-size", "300"]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    return folder / "plays"


@pytest.fixture(scope="module")
def bpe_server(bpe_run):
    with Server(bpe_run) as server:
        yield server


def forward_logprobs(model, ids) -> torch.Tensor:
    """log-softmax of blu's forward on `ids`: row t is the distribution of token t + 1."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids]))[0].float(), dim=-1)


def completion(server, **body) -> dict:
    answer = httpx.post(server.url + "/v1/completions", json={"model": server_model(server), **body}, timeout=120)
    assert answer.status_code == 200, answer.text
    return answer.json()


def server_model(server) -> str:
    return httpx.get(server.url + "/v1/models", timeout=10).json()["data"][0]["id"]


def test_echo_scores_every_prompt_token_as_blus_forward(server, local):
    """echo + logprobs: every prompt token's log-probability (the first null), text, offset and
    alternatives, within 1e-4 of blu's forward, then the generated tokens' as before; the
    official client reads it (without validation: see the module docstring)."""
    prompt = "ROMEO: What, my lord?"
    ids = local.tokenizer.encode(prompt)
    result = server.client(strict=False).completions.create(model="shakes", prompt=prompt, echo=True, logprobs=3,
                                                            max_tokens=4, seed=3)
    choice = result.choices[0]
    lp = choice.logprobs
    assert choice.text.startswith(prompt) and len(choice.text) == len(prompt) + 4
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(ids) + 4
    assert "".join(lp.tokens) == choice.text and lp.text_offset == list(range(len(choice.text)))
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    reference = forward_logprobs(local.model, local.tokenizer.encode(choice.text))
    for t in range(1, len(ids) + 4):
        row = reference[t - 1]
        assert lp.token_logprobs[t] == pytest.approx(row[local.tokenizer.encode(choice.text[t])[0]].item(), abs=1e-4)
        best = row[1:].topk(3).values.tolist()  # <unk> (id 0) is never an alternative
        assert sorted(lp.top_logprobs[t].values(), reverse=True) == pytest.approx(best, abs=1e-4)
    assert result.usage.prompt_tokens == len(ids) and result.usage.completion_tokens == 4


def test_max_tokens_zero_scores_the_prompt_alone(server, local):
    """max_tokens 0 with echo and logprobs scores the prompt and generates nothing, streamed or
    not (vLLM crashed on it, #6521)."""
    prompt = "KING: Peace!"
    whole = completion(server, prompt=prompt, echo=True, logprobs=1, max_tokens=0)
    choice = whole["choices"][0]
    assert choice["text"] == prompt and choice["finish_reason"] == "length"
    assert len(choice["logprobs"]["token_logprobs"]) == len(prompt) and whole["usage"]["completion_tokens"] == 0
    reference = forward_logprobs(local.model, local.tokenizer.encode(prompt))
    ids = local.tokenizer.encode(prompt)
    assert choice["logprobs"]["token_logprobs"][1:] == pytest.approx([reference[t - 1, ids[t]].item()
                                                                       for t in range(1, len(ids))], abs=1e-4)
    chunks = [c for c in server.client(strict=False).completions.create(
        model="shakes", prompt=prompt, echo=True, logprobs=1, max_tokens=0, stream=True)]
    assert "".join(c.choices[0].text for c in chunks) == prompt
    assert [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.token_logprobs] == \
        choice["logprobs"]["token_logprobs"]


def test_strict_client_refuses_only_the_leading_null(server):
    """What the official client in strict mode makes of an echo answer, so that docs/serve.md
    can say it exactly: openai's Logprobs types token_logprobs as List[float] and top_logprobs as
    List[Dict[str, float]], so the first prompt token's null (OpenAI's legacy API and vLLM send
    one too, lm-eval reads it) fails validation, and nothing else does: the same answer with that
    one entry given a number parses, and a non-echo answer with logprobs parses as it is."""
    import openai
    import pydantic

    body = dict(model="shakes", prompt="ROMEO: What", echo=True, logprobs=2, max_tokens=3, seed=3)
    with pytest.raises(openai.APIResponseValidationError):
        server.client(strict=True).completions.create(**body)
    raw = completion(server, **body)
    logprobs = raw["choices"][0]["logprobs"]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    logprobs["token_logprobs"][0], logprobs["top_logprobs"][0] = 0.0, {}
    with pytest.raises(pydantic.ValidationError, match="token_logprobs.0"):
        openai.types.Completion.model_validate(completion(server, **body))  # the type the strict client checks
    openai.types.Completion.model_validate(raw)  # the same answer with the leading null replaced
    plain = server.client(strict=True).completions.create(**{**body, "echo": False})
    assert len(plain.choices[0].logprobs.token_logprobs) == 3


def test_prompt_longer_than_the_context_is_scored_by_the_refill_rule(server, local):
    """A prompt past the context (32) is scored in windows of one context ending every half
    context: each token's log-probability is blu's forward on the first window whose last
    position predicts it or a later token, which gives it at least half a context of the
    tokens before it; a prompt of one context plus one token is one forward over a context."""
    for prompt in ("First Citizen: Before we proceed any further, hear me speak. All: Speak, speak.",
                   "First Citizen: Before we proceed "):  # 33 characters: one context plus one
        ids, context = local.tokenizer.encode(prompt), local.model.config.context
        scored = completion(server, prompt=prompt, echo=True, logprobs=0, max_tokens=1)["choices"][0]["logprobs"]
        ends = [e + (e == len(ids) - 1 and e > context) for e in range(context, len(ids), context // 2)] + [len(ids)]
        check_windows(local, ids, scored, ends, context)


def check_windows(local, ids, scored, ends, context):
    for t in range(1, len(ids)):
        end = next(e for e in ends if e >= t)
        start = max(0, end - context)
        assert t < context or t - start >= context // 2
        expected = forward_logprobs(local.model, ids[start:end])[t - start - 1, ids[t]].item()
        assert scored["token_logprobs"][t] == pytest.approx(expected, abs=1e-4), t


def test_several_prompts_each_with_n_choices(server):
    """A list of strings or of token-id lists is one prompt each: choice p * n + i is choice i of
    prompt p, the text that prompt gets alone with the same seed; usage counts every prompt."""
    prompts = ["ROMEO:", "KING:", "O"]
    body = dict(max_tokens=8, n=2, seed=5, temperature=0.8)
    together = completion(server, prompt=prompts, **body)
    assert [c["index"] for c in together["choices"]] == list(range(6))
    for p, prompt in enumerate(prompts):
        alone = completion(server, prompt=prompt, **body)
        assert [c["text"] for c in together["choices"][2 * p : 2 * p + 2]] == [c["text"] for c in alone["choices"]]
    assert together["usage"]["prompt_tokens"] == 12 and together["usage"]["completion_tokens"] == 48
    ids = [httpx.post(server.url + "/tokenize", json={"prompt": p}).json()["tokens"] for p in prompts]
    assert completion(server, prompt=ids, **body)["choices"] == together["choices"]
    streamed = server.client(strict=False).completions.create(model="shakes", prompt=prompts, stream=True, **body)
    finishes = sorted(c.choices[0].index for c in streamed if c.choices[0].finish_reason)
    assert finishes == list(range(6))


def test_token_ids_are_scored_exactly_as_given(bpe_server, bpe_run):
    """Ids are never decoded and encoded again: a BPE seam split off the merges, the end-of-text
    id inside a prompt, and a character's bytes with the prompt ending after its first one are
    each scored as those very ids, within 1e-4 of blu's forward on them."""
    run = blu.load(bpe_run)
    tokenizer = run.tokenizer
    byte_id = {raw[0]: i for i, raw in enumerate(tokenizer.token_bytes) if len(raw) == 1}
    canonical = tokenizer.encode("the king")
    merged = next(i for i, t in enumerate(canonical) if len(tokenizer.token_bytes[t]) > 1)
    # a merged token given as its bytes: encoding the text again would merge them back
    seam = canonical[:merged] + [byte_id[b] for b in tokenizer.token_bytes[canonical[merged]]] + canonical[merged + 1 :]
    assert tokenizer.encode(tokenizer.decode(seam)) != seam
    end = tokenizer.encode("ROMEO:") + [tokenizer.end_id] + tokenizer.encode("JULIET:")
    split = tokenizer.encode("caf") + [byte_id[0xC3], byte_id[0xA9], byte_id[0xC3]]  # "café", then half an "é"
    prompts = [seam, end, split]
    answer = completion(bpe_server, prompt=prompts, echo=True, logprobs=2, max_tokens=0)
    for ids, choice in zip(prompts, answer["choices"]):
        lp = choice["logprobs"]
        assert len(lp["token_logprobs"]) == len(ids)
        reference = forward_logprobs(run.model, ids)
        assert lp["token_logprobs"][1:] == pytest.approx([reference[t - 1, ids[t]].item() for t in range(1, len(ids))],
                                                         abs=1e-4)
        assert b"".join(tokenizer.token_bytes[i] for i in ids).decode("utf-8", errors="replace") == choice["text"]
    assert answer["usage"]["prompt_tokens"] == sum(len(ids) for ids in prompts)
    assert answer["choices"][2]["text"] == "café\ufffd" and answer["choices"][2]["logprobs"]["text_offset"][-3:] == [3, 3, 4]
    continued = completion(bpe_server, prompt=end, max_tokens=5, seed=1, temperature=0)["usage"]
    assert continued["prompt_tokens"] == len(end)


def test_bad_token_ids_are_refused_with_their_position(server, local):
    """An id out of the vocabulary, or not an integer, is a 400 that names its position."""
    vocab = local.tokenizer.vocab_size
    cases = [([[5, 6], [7, vocab]], f"prompt[1][1] is {vocab}"), ([5, -1], "prompt[1] is -1"),
             ([5, 2.5], "prompt[1] is 2.5"), ([[5], []], "prompt[1] is empty"), ([[5], "a"], "not a mixture")]
    for prompt, message in cases:
        answer = httpx.post(server.url + "/v1/completions", json={"prompt": prompt, "echo": True, "logprobs": 1})
        assert answer.status_code == 400 and message in answer.json()["error"]["message"], answer.text
        assert answer.json()["error"]["param"] == "prompt"
    answer = httpx.post(server.url + "/detokenize", json={"tokens": [1, vocab + 3]})
    assert answer.status_code == 400 and "tokens[1]" in answer.json()["error"]["message"]


def test_tokenizer_routes_in_vllms_shapes(server, local, bpe_server, bpe_run):
    """/tokenize, /detokenize and /tokenizer_info answer as vLLM's do; a special token's text
    typed in a prompt stays text, and the end-of-text id is given as an id."""
    tokens = httpx.post(server.url + "/tokenize", json={"prompt": "ROMEO:", "add_special_tokens": False}).json()
    assert tokens == {"count": 6, "max_model_len": 32, "tokens": local.tokenizer.encode("ROMEO:")}
    assert httpx.post(server.url + "/detokenize", json={"tokens": tokens["tokens"]}).json() == {"prompt": "ROMEO:"}
    info = httpx.get(server.url + "/tokenizer_info").json()
    assert info["eos_token"] is None and info["eos_token_id"] is None and info["model_max_length"] == 32
    assert info["start_token_id"] == local.tokenizer.encode("\n")[0] and info["unk_token_id"] == 0
    tokenizer = blu.load(bpe_run).tokenizer
    typed = httpx.post(bpe_server.url + "/tokenize", json={"prompt": "<|endoftext|>", "return_token_strs": True}).json()
    assert tokenizer.end_id not in typed["tokens"] and "".join(typed["token_strs"]) == "<|endoftext|>"
    info = httpx.get(bpe_server.url + "/tokenizer_info").json()
    assert info["eos_token_id"] == info["start_token_id"] == tokenizer.end_id and info["vocab_size"] == 300
    assert info["tokenizer_class"] == "blu:bpe" and "eos_token" in info  # the key the harness probes for


def test_waiting_prompts_are_scored_in_one_forward(served_run, monkeypatch):
    """Jobs waiting together, from one request or many, have their prompts scored in one batched
    call (prefill batched across rows), not one forward each."""
    import blu.serve.scoring as scoring

    calls = []
    real = scoring.score_tokens
    monkeypatch.setattr(scoring, "score_tokens", lambda model, texts, *rest: calls.append(len(texts)) or
                        real(model, texts, *rest))
    engine = Engine(served_run, "cpu", capacity=4, max_queue=64)
    finished, done = [], threading.Event()
    scores = []

    def send(event):
        if isinstance(event, PromptScores):
            scores.append(event)
        elif isinstance(event, Finish):
            finished.append(event)
            if len(finished) == 24:
                done.set()

    ids = engine.tokenizer.encode("ROMEO: speak")
    jobs = [Job(ids[: 3 + i % 9], 1, i % 2, SamplingOptions(temperature=0), None, [], 0, send, score=1) for i in range(24)]
    engine.submit(*jobs[:8])
    engine.submit(*jobs[8:])  # a second request, waiting beside the first
    engine.start()
    try:
        assert done.wait(60)
    finally:
        engine.stop()
    assert calls == [24] and len(scores) == 24 and engine.active == 0
