"""`blu serve` through the official `openai` client (strict mode), against a real server process
on a tiny trained run: shapes, sampling controls, stop strings, log-probabilities, chat, n,
concurrency, disconnects. Errors are in tests/test_serve_errors.py."""

from concurrent.futures import ThreadPoolExecutor
import json
import socket
import time

import httpx
import pytest
from serve_support import server_fixture
import torch

import blu

server = server_fixture("--max-batch", "16")


@pytest.fixture(scope="module")
def local(served_run):
    return blu.load(served_run)


def reference(local, prompt, max_tokens, seed, stop=(), **controls) -> str:
    """What `blu generate` prints for the same request (the library the server uses)."""
    return "".join(local.generate(prompt, max_new_tokens=max_tokens, seed=seed, stop=list(stop), **controls))


def sse_payloads(server, path, body) -> list[str]:
    """The `data:` payloads of a streamed answer, read raw (after checking the stream's framing)."""
    with httpx.stream("POST", server.url + path, json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    assert raw.endswith("data: [DONE]\n\n")
    return [event[len("data: "):] for event in raw.split("\n\n") if event]


def test_models_and_health(server, served_run):
    """The one model is the run folder's name, with what a client needs to know of it."""
    models = server.client().models.list().data
    assert [m.id for m in models] == ["shakes"]
    extra = models[0].model_extra
    assert extra["context"] == 32 and extra["tokenizer"] == "char" and extra["vocab_size"] > 30
    health = server.health()
    assert health["status"] == "ok" and health["active_requests"] == 0


def test_completion_is_blu_generate(server, local):
    """A seeded completion is exactly the text `blu generate` gives with the same controls: the
    server uses the library's decoder, sampler and stop strings, not a copy of them."""
    controls = dict(temperature=0.9, top_p=0.8)
    extra = dict(top_k=20, min_p=0.02, repetition_penalty=1.3)
    result = server.client().completions.create(model="shakes", prompt="ROMEO:", max_tokens=60, seed=11,
                                                extra_body=extra, **controls)
    choice = result.choices[0]
    assert choice.text == reference(local, "ROMEO:", 60, 11, **controls, **extra)
    assert choice.finish_reason == "length" and choice.index == 0
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (6, 60, 66)
    assert result.object == "text_completion" and result.id.startswith("cmpl-")


def test_defaults_follow_openai(server, local):
    """max_tokens defaults to 16 for completions, temperature and top_p to 1, as OpenAI's."""
    result = server.client().completions.create(model="shakes", prompt="KING:", seed=4)
    assert result.usage.completion_tokens == 16
    assert result.choices[0].text == reference(local, "KING:", 16, 4, temperature=1.0, top_p=1.0)


def test_stream_equals_whole_and_ends_with_done(server):
    """Streamed chunks join into the non-streamed text; each choice gets its finish_reason once,
    in its last chunk; the usage chunk (choices []) comes last, before data: [DONE]."""
    body = dict(model="shakes", prompt="The ", max_tokens=40, seed=5, n=3, temperature=1.0)
    whole = server.client().completions.create(**body)
    payloads = sse_payloads(server, "/v1/completions", {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    texts, finishes = ["", "", ""], [[], [], []]
    for chunk in chunks[:-1]:
        assert chunk["usage"] is None and len(chunk["choices"]) == 1
        choice = chunk["choices"][0]
        assert not finishes[choice["index"]], "nothing after a choice's finish_reason"
        texts[choice["index"]] += choice["text"]
        if choice["finish_reason"]:
            finishes[choice["index"]].append(choice["finish_reason"])
    assert finishes == [["length"]] * 3
    assert texts == [c.text for c in sorted(whole.choices, key=lambda c: c.index)]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole.usage.model_dump(exclude_none=True)
    assert whole.usage.completion_tokens == 120 and whole.usage.prompt_tokens == 4
    # and the official client reads the same stream
    streamed = server.client(strict=False).completions.create(**body, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices and c.choices[0].index == 1) == texts[1]


def test_stop_strings_never_leak(server, local):
    """A stop string arrives one character per chunk, so it is always split across chunks; what
    could still begin one is held back, and the text ends before it, in stream and not."""
    free = reference(local, "ROMEO:", 80, 3)
    stop = free[30:33]  # a 3-character string the model will write
    cut = free.index(stop)
    client = server.client()
    whole = client.completions.create(model="shakes", prompt="ROMEO:", max_tokens=80, seed=3, stop=[stop, "@@never"],
                                      temperature=0.8, top_p=0.9)
    assert whole.choices[0].text == free[:cut] and whole.choices[0].finish_reason == "stop"
    pieces = [c.choices[0].text for c in server.client(strict=False).completions.create(
        model="shakes", prompt="ROMEO:", max_tokens=80, seed=3, stop=stop, temperature=0.8, top_p=0.9, stream=True)
        if c.choices]
    assert "".join(pieces) == free[:cut]
    assert whole.usage.completion_tokens == cut + len(stop), "usage counts the tokens of the stop string, generated too"


def test_logprobs_are_the_models_own(server, served_run, local):
    """logprobs are log-softmax of the model's logits (before temperature and top-p), the chosen
    token's and the 5 likeliest alternatives', with text offsets into the returned text."""
    result = server.client().completions.create(model="shakes", prompt="ROMEO:", max_tokens=12, seed=2, logprobs=5,
                                                temperature=1.5, top_p=0.5)
    lp = result.choices[0].logprobs
    text = result.choices[0].text
    assert "".join(lp.tokens) == text and len(lp.token_logprobs) == 12
    assert lp.text_offset == list(range(12))
    ids = local.tokenizer.encode("ROMEO:" + text)
    with torch.no_grad():
        model_logprobs = torch.log_softmax(local.model(torch.tensor([ids]))[0].float(), dim=-1)
    for i, (token, value, top) in enumerate(zip(lp.tokens, lp.token_logprobs, lp.top_logprobs)):
        row = model_logprobs[5 + i]
        assert value == pytest.approx(row[local.tokenizer.encode(token)[0]].item(), abs=1e-4)
        assert len(top) == 5 and max(top.values()) == pytest.approx(row[1:].max().item(), abs=1e-4)
        assert all(v >= value - 1e-6 for v in top.values()) or token in top


def test_echo_and_max_tokens_zero(server):
    """echo returns the prompt before the completion; max_tokens 0 (which crashed vLLM with echo) is the prompt alone."""
    client = server.client()
    result = client.completions.create(model="shakes", prompt="KING:", max_tokens=0, echo=True)
    assert result.choices[0].text == "KING:" and result.choices[0].finish_reason == "length"
    assert result.usage.completion_tokens == 0
    result = client.completions.create(model="shakes", prompt="KING:", max_tokens=5, echo=True, seed=1)
    assert result.choices[0].text.startswith("KING:") and len(result.choices[0].text) == 10


def test_chat_transcript_and_default_stops(server, local):
    """Chat renders `role: content` lines and opens `assistant: `; the reply stops before the
    model writes another turn; a trailing assistant message is continued."""
    client = server.client()
    messages = [{"role": "user", "content": "Who art thou?"}]
    reply = client.chat.completions.create(model="shakes", messages=messages, max_completion_tokens=200, seed=1)
    prompt = "user: Who art thou?\nassistant: "
    stops = ["\nassistant:", "\nsystem:", "\nuser:"]
    assert reply.choices[0].message.content == reference(local, prompt, 200, 1, stops, temperature=1.0, top_p=1.0)
    assert reply.choices[0].message.role == "assistant" and reply.object == "chat.completion"
    assert reply.usage.prompt_tokens == len(prompt)
    prefilled = messages + [{"role": "assistant", "content": "I am"}]
    cont = client.chat.completions.create(model="shakes", messages=prefilled, max_tokens=30, seed=2)
    assert cont.choices[0].message.content == reference(local, "user: Who art thou?\nassistant: I am", 30, 2, stops,
                                                        temperature=1.0, top_p=1.0)


def test_chat_stream_and_logprobs(server):
    """Streamed chat: the role first, content deltas, a finish chunk with an empty delta, the
    usage chunk; logprobs + top_logprobs per token with its UTF-8 bytes."""
    body = dict(model="shakes", messages=[{"role": "user", "content": "Speak."}], max_tokens=20, seed=9,
                logprobs=True, top_logprobs=3, n=2)
    payloads = sse_payloads(server, "/v1/chat/completions",
                            {**body, "stream": True, "stream_options": {"include_usage": True}})
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert len({c["id"] for c in chunks}) == 1 and all(c["object"] == "chat.completion.chunk" for c in chunks)
    firsts = {}
    for chunk in chunks[:-1]:
        choice = chunk["choices"][0]
        firsts.setdefault(choice["index"], choice["delta"])
        if choice["finish_reason"]:
            assert choice["delta"] == {}
    assert firsts == {0: {"role": "assistant", "content": ""}, 1: {"role": "assistant", "content": ""}}
    whole = server.client().chat.completions.create(**body)
    for choice in whole.choices:
        content = choice.logprobs.content
        assert "".join(t.token for t in content) == choice.message.content or choice.finish_reason == "stop"
        for t in content:
            assert bytes(t.bytes) == t.token.encode() and len(t.top_logprobs) == 3 and t.logprob <= 0
    assert whole.usage.completion_tokens >= sum(len(c.message.content) for c in whole.choices)
    streamed = server.client().chat.completions.create(**body, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices and c.choices[0].index == 0)
    assert text == whole.choices[0].message.content


def test_eight_concurrent_streams_equal_each_alone(server):
    """8 streams at once, decoded in one batch at different positions, each equal to the same
    request made alone (per-row generators; see README "Same seed, same text")."""
    client = server.client()
    requests = [dict(model="shakes", prompt=p, max_tokens=40 + 5 * i, seed=100 + i, temperature=0.8, top_p=0.9)
                for i, p in enumerate(["ROMEO:", "JULIET:\n", "KING", "O", "What is", "First Citizen:", "A", "The king"])]
    alone = [client.completions.create(**r).choices[0].text for r in requests]

    def streamed(r):
        chunks = list(server.client(strict=False).completions.create(**r, stream=True))
        assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["length"]
        return "".join(c.choices[0].text for c in chunks)

    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(streamed, requests))
    assert together == alone
    assert server.wait_idle()["active_requests"] == 0


def test_disconnect_stops_generation(server):
    """A client that goes away (streamed or not) stops being computed: the server's own count of
    active requests returns to 0 long before the 8,000 tokens asked for could be generated."""
    body = {"model": "shakes", "prompt": "ROMEO:", "max_tokens": 8000, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        next(lines)
        next(lines)
        assert server.health()["active_requests"] == 1
    assert server.wait_idle(timeout=5)["active_requests"] == 0
    raw = json.dumps({**body, "stream": False}).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as s:  # not streamed: the client hangs up while waiting
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(raw), raw))
        deadline = time.monotonic() + 5
        while server.health()["active_requests"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.health()["active_requests"] == 1
    assert server.wait_idle(timeout=5)["active_requests"] == 0


def test_prompt_as_token_ids(server, local):
    """The openai client may send a prompt as token ids; they read as the text they stand for,
    and count as prompt tokens as that text does."""
    ids = local.tokenizer.encode("ROMEO:")
    a = server.client().completions.create(model="shakes", prompt=ids, max_tokens=10, seed=8)
    b = server.client().completions.create(model="shakes", prompt="ROMEO:", max_tokens=10, seed=8)
    assert a.choices[0].text == b.choices[0].text
    assert a.usage.model_dump() == b.usage.model_dump() and a.usage.prompt_tokens == len(ids) == 6


def test_neutral_openai_fields_are_accepted(server):
    """Fields blu does not implement are accepted at their neutral value (clients send them by
    default), and chat's max_tokens applies when max_completion_tokens is null."""
    body = {"model": "shakes", "prompt": "ROMEO:", "max_tokens": 3, "frequency_penalty": 0, "presence_penalty": 0.0,
            "logit_bias": {}, "tools": [], "user": "someone", "suffix": None}
    answer = httpx.post(server.url + "/v1/completions", json=body, timeout=30)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 3
    chat = {"model": "shakes", "messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": None,
            "max_tokens": 3}
    answer = httpx.post(server.url + "/v1/chat/completions", json=chat, timeout=30)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] <= 3
