"""`blu serve` refusing what it should: every bad value a 400 in OpenAI's error shape (never a
framework's 422 {"detail": ...}), 404, 413, 401 with a key, 503 with Retry-After beyond the
queue, closed CORS, the Host check, and the warning when listening beyond loopback without a key."""

import json
import subprocess
import sys

import httpx
import openai
import pytest
from serve_support import Server, server_fixture

KEY = "sesame-123"
server = server_fixture()
TEMPLATE = "{role} said: {content}\n"


@pytest.fixture(scope="module")
def guarded(served_run, tmp_path_factory):
    """A server with a key, one origin allowed, one row, a queue of one and its own chat template."""
    template = tmp_path_factory.mktemp("template") / "chat.txt"
    template.write_text(TEMPLATE, encoding="utf-8")
    with Server(served_run, "--api-key", KEY, "--cors-origin", "http://notes.example", "--max-batch", "1",
                "--max-queue", "1", "--chat-template", str(template)) as server:
        yield server


def assert_openai_error(response: httpx.Response, status: int, param=None, code=None) -> dict:
    """The error of `response`, checked to be in OpenAI's shape with this status (and param, code)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


COMPLETION = {"model": "shakes", "prompt": "ROMEO:"}
CHAT = {"model": "shakes", "messages": [{"role": "user", "content": "Hi"}]}
BAD_VALUES = [  # (path, body changes, param, code)
    ("/v1/completions", {"temperature": -1}, "temperature", None),
    ("/v1/completions", {"temperature": "hot"}, "temperature", None),
    ("/v1/completions", {"temperature": 1e999}, "temperature", None),  # json's Infinity
    ("/v1/completions", {"top_p": 0}, "top_p", None),
    ("/v1/completions", {"top_p": 1.5}, "top_p", None),
    ("/v1/completions", {"top_k": -1}, "top_k", None),
    ("/v1/completions", {"min_p": 1}, "min_p", None),
    ("/v1/completions", {"repetition_penalty": 0}, "repetition_penalty", None),
    ("/v1/completions", {"repetition_window": 100_000}, "repetition_window", None),
    ("/v1/completions", {"max_tokens": 10**9}, "max_tokens", None),
    ("/v1/completions", {"max_tokens": -1}, "max_tokens", None),
    ("/v1/completions", {"max_tokens": True}, "max_tokens", None),
    ("/v1/completions", {"n": 0}, "n", None),
    ("/v1/completions", {"n": 10_000}, "n", None),
    ("/v1/completions", {"logprobs": 6}, "logprobs", None),
    ("/v1/completions", {"seed": "lucky"}, "seed", None),
    ("/v1/completions", {"seed": 2**70}, "seed", None),
    ("/v1/completions", {"stop": 5}, "stop", None),
    ("/v1/completions", {"stop": ["a"] * 20}, "stop", None),
    ("/v1/completions", {"stream": "yes"}, "stream", None),
    ("/v1/completions", {"stream_options": {"include_usage": True}}, "stream_options", None),
    ("/v1/completions", {"prompt": [-1]}, "prompt", None),  # crashed llama.cpp (#12178)
    ("/v1/completions", {"prompt": ["a", 5]}, "prompt", None),
    ("/v1/completions", {"prompt": [[1, 2], [10**6]]}, "prompt", "invalid_token_id"),
    ("/v1/completions", {"prompt": []}, "prompt", None),
    ("/v1/completions", {"prompt": {"text": "a"}}, "prompt", None),
    ("/v1/completions", {"prompt": "x" * 100_001}, "prompt", "prompt_too_long"),
    ("/v1/completions", {"frequency_penalty": 0.5}, "frequency_penalty", "unsupported_parameter"),
    ("/v1/completions", {"prompt": ["a"] * 1025}, "prompt", "too_many_prompts"),
    ("/v1/chat/completions", {"messages": []}, "messages", None),
    ("/v1/chat/completions", {"messages": [{"content": "no role"}]}, "messages", None),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages", None),
    ("/v1/chat/completions", {"top_logprobs": 3}, "top_logprobs", None),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs", None),
    ("/v1/chat/completions", {"max_completion_tokens": 10**9}, "max_completion_tokens", None),
]


@pytest.mark.parametrize("path,changes,param,code", BAD_VALUES, ids=[f"{p[4:]}-{list(c)[0]}" for p, c, *_ in BAD_VALUES])
def test_bad_values_are_400_in_openai_shape(server, path, changes, param, code):
    """Each value `blu generate` would refuse, and each cap, is a 400 naming the field, before
    anything is generated (llama.cpp hung on unchecked values: #19367)."""
    body = {**(COMPLETION if "chat" not in path else CHAT), **changes}
    raw = httpx.post(server.url + path, content=json.dumps(body, allow_nan=True), timeout=30,
                     headers={"content-type": "application/json"})
    error = assert_openai_error(raw, 400, param, code)
    assert error["type"] == "invalid_request_error"


def test_unknown_characters_are_listed(server):
    """Prompt characters outside the vocabulary: blu generate drops them with a note on stderr,
    which an API client cannot read, so the API refuses them and lists them."""
    with pytest.raises(openai.BadRequestError) as caught:
        server.client().completions.create(model="shakes", prompt="ROMEO: ☃ ünd ☃")
    assert caught.value.code == "unknown_characters" and caught.value.param == "prompt"
    assert "☃" in caught.value.message and "ü" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        server.client().chat.completions.create(model="shakes", messages=[{"role": "user", "content": "€"}])
    assert caught.value.code == "unknown_characters" and caught.value.param == "messages"


def test_malformed_bodies_unknown_model_and_routes(server):
    """Bodies that are not a JSON object, an unknown model, route and method: each an error in
    OpenAI's shape (400, 404, 405), never a framework's own page."""
    url = server.url
    assert_openai_error(httpx.post(url + "/v1/completions", content=b"{not json", timeout=10), 400, code="invalid_json")
    assert_openai_error(httpx.post(url + "/v1/completions", json=[1, 2], timeout=10), 400, code="invalid_json")
    assert_openai_error(httpx.post(url + "/v1/completions", content=b"\xff\xfe", timeout=10), 400, code="invalid_json")
    with pytest.raises(openai.NotFoundError) as caught:
        server.client().completions.create(model="gpt-4", prompt="ROMEO:")
    assert caught.value.code == "model_not_found"
    assert_openai_error(httpx.get(url + "/v1/nothing", timeout=10), 404)
    assert_openai_error(httpx.get(url + "/v1/completions", timeout=10), 405)


def test_body_over_the_cap_is_413(server):
    """Bodies over 1 MiB are refused, whether the length is announced or streamed without one."""
    big = b'{"prompt": "' + b"a" * (1 << 20) + b'"}'
    assert_openai_error(httpx.post(server.url + "/v1/completions", content=big, timeout=30), 413, code="body_too_large")

    def chunks():
        for _ in range(20):
            yield b"a" * 65536

    assert_openai_error(httpx.post(server.url + "/v1/completions", content=chunks(), timeout=30), 413)


def test_api_key(guarded):
    """With --api-key, /v1 and /api want the Bearer key (401 in OpenAI's shape otherwise);
    /health and the page stay public."""
    with pytest.raises(openai.AuthenticationError):
        guarded.client().models.list()
    with pytest.raises(openai.AuthenticationError):
        guarded.client(api_key=KEY + "x").completions.create(model="shakes", prompt="A", max_tokens=2)
    assert_openai_error(httpx.get(guarded.url + "/api/training", timeout=10), 401, code="invalid_api_key")
    assert guarded.client(api_key=KEY).completions.create(model="shakes", prompt="A", max_tokens=2).usage.completion_tokens == 2
    assert httpx.get(guarded.url + "/health", timeout=10).json()["api_key_required"] is True
    assert httpx.get(guarded.url + "/", timeout=10).status_code == 200
    assert httpx.get(guarded.url + "/static/api.js", timeout=10).status_code == 200


def test_cors_closed_unless_an_origin_is_named(server, guarded):
    """A browser on another origin may call the API only if --cors-origin names it."""
    preflight = {"Origin": "http://notes.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    allowed = httpx.options(guarded.url + "/v1/completions", headers=preflight, timeout=10)
    assert allowed.headers.get("access-control-allow-origin") == "http://notes.example"
    other = httpx.options(guarded.url + "/v1/completions", headers={**preflight, "Origin": "http://evil.example"}, timeout=10)
    assert other.headers.get("access-control-allow-origin") is None
    closed = httpx.get(server.url + "/v1/models", headers={"Origin": "http://notes.example"}, timeout=10)
    assert closed.status_code == 200 and "access-control-allow-origin" not in closed.headers


def test_host_header_must_be_loopback(server):
    """On loopback, a request naming another host (a DNS-rebinding page) is refused."""
    assert_openai_error(httpx.get(server.url + "/v1/models", headers={"Host": "evil.example"}, timeout=10), 400,
                        code="bad_host")
    assert httpx.get(server.url + "/health", headers={"Host": f"localhost:{server.port}"}, timeout=10).status_code == 200


def test_full_queue_is_503_with_retry_after(guarded):
    """One row busy and one request waiting: the next is refused at once with 503 and Retry-After;
    when the first two hang up, the server drops both."""
    auth = {"Authorization": f"Bearer {KEY}"}
    body = dict(model="shakes", prompt="ROMEO:", max_tokens=8000)
    with httpx.Client(timeout=10, headers=auth) as first, httpx.Client(timeout=10, headers=auth) as second:
        with first.stream("POST", guarded.url + "/v1/completions", json={**body, "stream": True}) as running:
            lines = running.iter_lines()  # kept: a dropped iterator closes the stream
            next(lines)
            with second.stream("POST", guarded.url + "/v1/completions", json={**body, "stream": True}) as waiting:
                assert waiting.status_code == 200 and guarded.health()["active_requests"] == 2
                refused = httpx.post(guarded.url + "/v1/completions", json=body, headers=auth, timeout=10)
                assert_openai_error(refused, 503, code="queue_full")
                assert refused.headers["retry-after"] == "1"
                with pytest.raises(openai.InternalServerError):  # what the client makes of a 503 (it retries by default)
                    guarded.client(api_key=KEY).completions.create(**body)
    assert guarded.wait_idle(timeout=10)["active_requests"] == 0


def test_warning_when_listening_beyond_loopback_without_a_key(served_run, tmp_path):
    """Listening beyond loopback with no --api-key is allowed, with a warning naming --api-key."""
    with Server(served_run, "--host", "0.0.0.0", log=tmp_path / "open.log") as server:
        assert "WARNING" in server.log.read_text() and "--api-key" in server.log.read_text()


def test_chat_template_flag_and_bad_settings(guarded, served_run, tmp_path):
    """--chat-template replaces the transcript line; a template with characters the model never
    saw, or an empty queue, is refused when the server starts (one line, exit code 2)."""
    reply = guarded.client(api_key=KEY).chat.completions.create(
        model="shakes", messages=[{"role": "user", "content": "Hi"}], max_tokens=3, seed=1)
    assert reply.usage.prompt_tokens == len("user said: Hi\nassistant said: ")
    models = guarded.client(api_key=KEY).models.list().data
    assert models[0].model_extra["chat_template"] == TEMPLATE
    bad = tmp_path / "bad.txt"
    bad.write_text("<|im_start|>{role}\n{content}<|im_end|>\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "blu", "serve", "--run", str(served_run), "--chat-template", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "never saw" in done.stderr
    done = subprocess.run([sys.executable, "-m", "blu", "serve", "--run", str(served_run), "--max-queue", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "must be at least 1, got 64 and 0" in done.stderr
