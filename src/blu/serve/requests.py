"""Requests: the bodies of /v1/completions and /v1/chat/completions read strictly into a `Call`,
the engine's `Job`s (one per prompt) and how to answer them.

Every value is checked before anything is sent back, so that a bad one is a 400 in OpenAI's
error shape and never a failure inside a stream (llama.cpp #14566). The sampling values go
through `SamplingOptions.validate()`, the same checks as `blu generate`. Defaults are OpenAI's
where OpenAI has one (temperature 1, top_p 1, max_tokens 16 for completions), blu's otherwise."""

from dataclasses import dataclass, fields
import math

from ..config import SamplingOptions
from ..errors import BluError
from .chat import ChatTemplate
from .errors import ApiError
from .events import Job
from .prompts import completion_prompts, encode_prompt
from .settings import ServerSettings

CHAT_MAX_TOKENS = 1024  # chat's default reply length: OpenAI's is "up to the context", which blu does not have
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limits
MAX_TOP_LOGPROBS = 20
SEED_RANGE = (-(1 << 63), (1 << 63) - 1)
# OpenAI fields blu does not implement: refused unless they hold their neutral value, so a
# client never believes they took effect (litgpt silently ignored stop and max_tokens).
UNSUPPORTED = {"frequency_penalty": 0, "presence_penalty": 0, "logit_bias": None, "suffix": None, "tools": None,
               "functions": None, "tool_choice": None, "prompt_logprobs": None}


@dataclass
class Call:
    """A checked request: the jobs for the engine, one per prompt, and how to shape the answer.
    Choice i of prompt p is choice p * n + i of the answer."""

    kind: str  # "completion" or "chat"
    jobs: list[Job]
    texts: list[str]  # each prompt's text as the model reads it (the chat transcript for chat), echoed with echo
    stream: bool
    include_usage: bool
    echo: bool
    logprobs: int | None  # alternatives per token; None = no log-probabilities
    prompt_tokens: int  # the prompts' tokens, for usage (an empty prompt's start_ids are not the user's)

    @property
    def n(self) -> int:
        return self.jobs[0].n

    @property
    def choices(self) -> int:
        return len(self.jobs) * self.n


def bad(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param, code)


def integer(body: dict, name: str, default, low: int, high: int):
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise bad(f"{name} must be an integer from {low} to {high}, got {value!r}", name)
    return value


def number(body: dict, name: str, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise bad(f"{name} must be a finite number, got {value!r}", name)
    return float(value)


def boolean(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(f"{name} must be true or false, got {value!r}", name)
    return value


def sampling_options(body: dict, settings: ServerSettings) -> SamplingOptions:
    """temperature and top_p (OpenAI's), top_k, min_p, repetition_penalty and repetition_window
    (blu's, sent by the openai client as extra_body), checked as `blu generate` checks them."""
    options = SamplingOptions(
        temperature=number(body, "temperature", 1.0), top_p=number(body, "top_p", 1.0),
        top_k=integer(body, "top_k", 0, -(1 << 31), 1 << 31), min_p=number(body, "min_p", 0.0),
        repetition_penalty=number(body, "repetition_penalty", 1.0),
        repetition_window=integer(body, "repetition_window", SamplingOptions.repetition_window, -(1 << 31),
                                  settings.max_repetition_window))
    try:
        options.validate()
    except BluError as error:
        # The messages begin with the flag's name (top-p must be ...): the param is that field.
        name = str(error).split(" ")[0].replace("-", "_")
        raise bad(str(error).replace(name.replace("_", "-"), name, 1), name if name in
                  {f.name for f in fields(SamplingOptions)} else None) from None
    return options


def stop_strings(body: dict, settings: ServerSettings) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > settings.max_stop:
        raise bad(f"stop must be a string or a list of at most {settings.max_stop} strings", "stop")
    return [s for s in stops if s]


def check_common(body: dict, model_id: str) -> None:
    model = body.get("model")
    if model is not None and model != model_id:
        raise ApiError(404, f"the model {model!r} does not exist; this server has {model_id!r}", "model", "model_not_found")
    for name, neutral in UNSUPPORTED.items():
        value = body.get(name)
        if value not in (None, neutral) and value != {} and value != []:  # an empty list of tools asks for none
            raise bad(f"{name} is not supported by blu" + (" (use repetition_penalty)" if "penalty" in name else ""),
                      name, "unsupported_parameter")


def job_for(body: dict, ids: list[int], tokenizer, settings: ServerSettings, max_tokens: int, stop: list[str],
            logprobs: int | None, score: int | None = None) -> Job:
    n_cap = min(settings.max_n, settings.max_batch)
    return Job(prompt_ids=ids or tokenizer.start_ids(), n=integer(body, "n", 1, 1, n_cap), max_tokens=max_tokens,
               options=sampling_options(body, settings), seed=integer(body, "seed", None, *SEED_RANGE), stop=stop,
               logprobs=logprobs, score=score if ids else None)


def stream_flags(body: dict) -> tuple[bool, bool]:
    stream = boolean(body, "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not stream or not isinstance(options, dict):
        raise bad("stream_options needs stream: true and must be an object", "stream_options")
    return stream, boolean(options, "include_usage")


def completion_call(body: dict, tokenizer, settings: ServerSettings, model_id: str) -> Call:
    """Each prompt (prompts.py) becomes a job; with echo and logprobs its prompt is scored too."""
    check_common(body, model_id)
    prompts = completion_prompts(body.get("prompt", ""), tokenizer, settings)
    logprobs = integer(body, "logprobs", None, 0, MAX_COMPLETION_LOGPROBS)
    echo = boolean(body, "echo")
    max_tokens = integer(body, "max_tokens", 16, 0, settings.max_tokens)
    stop = stop_strings(body, settings)
    score = logprobs if echo else None
    jobs = [job_for(body, ids, tokenizer, settings, max_tokens, stop, logprobs, score) for ids, _ in prompts]
    stream, include_usage = stream_flags(body)
    return Call("completion", jobs, [text for _, text in prompts], stream, include_usage, echo, logprobs,
                sum(len(ids) for ids, _ in prompts))


def chat_messages(body: dict) -> list[tuple[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list", "messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not message["role"]:
            raise bad(f"messages[{i}] must be an object with a role", "messages")
        content = message.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise bad(f"messages[{i}].content: only text parts are supported", "messages")
            content = "".join(p["text"] for p in content)
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise bad(f"messages[{i}].content must be a string or a list of text parts", "messages")
        out.append((message["role"], content))
    return out


def chat_call(body: dict, tokenizer, settings: ServerSettings, model_id: str, template: ChatTemplate) -> Call:
    check_common(body, model_id)
    messages = chat_messages(body)
    prompt = template.render(messages)
    ids = encode_prompt(prompt, tokenizer, "messages", settings, lambda text: template.encode(text, tokenizer))
    top = integer(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS)
    wants_logprobs = boolean(body, "logprobs")
    if top is not None and not wants_logprobs:
        raise bad("top_logprobs needs logprobs: true", "top_logprobs")
    logprobs = (top or 0) if wants_logprobs else None
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    limit = body.get(name)
    max_tokens = integer({name: limit}, name, min(CHAT_MAX_TOKENS, settings.max_tokens), 0, settings.max_tokens)
    stop = stop_strings(body, settings) + template.stops(role for role, _ in messages)
    job = job_for(body, ids, tokenizer, settings, max_tokens, stop, logprobs)
    job.stop_ids = template.stop_ids  # a run's own template ends the reply at its end-of-turn token
    stream, include_usage = stream_flags(body)
    return Call("chat", [job], [prompt], stream, include_usage, False, logprobs, len(job.prompt_ids))
