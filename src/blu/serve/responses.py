"""Responses: OpenAI's objects, as the official `openai` client reads them (its types/completion*.py
and types/chat/chat_completion*.py), built from the engine's events: one `Responder` per request
builds its chunks when streamed, and `Collected` gathers the events of an answer that is not."""

import secrets
import time

from .errors import ApiError
from .events import Failure, Finish, TextDelta, TokenInfo
from .requests import Call


class Responder:
    """Builds the objects of one request's answer."""

    def __init__(self, call: Call, model_id: str):
        self.call, self.model_id = call, model_id
        self.chat = call.kind == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())
        self.text_start = len(call.prompt) if call.echo else 0  # where the completion begins in the text returned

    def _envelope(self, chunk: bool) -> dict:
        kind = "chat.completion.chunk" if chunk else "chat.completion"
        return {"id": self.id, "object": kind if self.chat else "text_completion", "created": self.created,
                "model": self.model_id, "system_fingerprint": None}

    def usage(self, completion_tokens: int) -> dict:
        prompt = len(self.call.job.prompt_ids) if self.call.prompt else 0  # an empty prompt reads start_ids: not the user's
        return {"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": prompt + completion_tokens}

    def logprobs(self, tokens: list[TokenInfo]) -> dict | None:
        """Chat's `bytes` are each token's own (a byte token holds part of a character, whose
        text alone is U+FFFD); completions' text_offset is where its text begins in `text`."""
        if self.call.logprobs is None:
            return None
        if self.chat:
            return {"content": [{"token": t.chosen.text, "logprob": t.chosen.logprob, "bytes": list(t.chosen.bytes),
                                 "top_logprobs": [{"token": a.text, "logprob": a.logprob, "bytes": list(a.bytes)}
                                                  for a in t.top]}
                                for t in tokens], "refusal": None}
        return {"tokens": [t.chosen.text for t in tokens], "token_logprobs": [t.chosen.logprob for t in tokens],
                "top_logprobs": [{a.text: a.logprob for a in t.top} for t in tokens],
                "text_offset": [self.text_start + t.offset for t in tokens]}

    # streamed

    def opening_chunks(self) -> list[dict]:
        """Chat: the assistant role first, per choice; completions with echo: the prompt."""
        if self.chat:
            return [self._chunk(i, {"role": "assistant", "content": ""}) for i in range(self.call.job.n)]
        if self.call.echo:
            return [self._chunk(i, self.call.prompt) for i in range(self.call.job.n)]
        return []

    def delta_chunk(self, delta: TextDelta) -> dict:
        content = {"content": delta.text} if self.chat else delta.text
        return self._chunk(delta.index, content, self.logprobs(delta.tokens))

    def finish_chunk(self, index: int, reason: str) -> dict:
        return self._chunk(index, {} if self.chat else "", finish_reason=reason)

    def usage_chunk(self, completion_tokens: int) -> dict:
        return {**self._envelope(True), "choices": [], "usage": self.usage(completion_tokens)}

    def _chunk(self, index: int, content, logprobs=None, finish_reason=None) -> dict:
        choice = {"index": index, ("delta" if self.chat else "text"): content, "logprobs": logprobs,
                  "finish_reason": finish_reason}
        chunk = {**self._envelope(True), "choices": [choice]}
        if self.call.include_usage:
            chunk["usage"] = None  # OpenAI: every chunk but the last has usage null
        return chunk

    # collected

    def whole(self, collected: "Collected") -> dict:
        choices = []
        for index, (text, tokens, reason) in enumerate(zip(collected.texts, collected.tokens, collected.reasons)):
            logprobs = self.logprobs(tokens)
            if self.chat:
                choices.append({"index": index, "message": {"role": "assistant", "content": text, "refusal": None},
                                "logprobs": logprobs, "finish_reason": reason})
            else:
                text = (self.call.prompt if self.call.echo else "") + text
                choices.append({"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason})
        return {**self._envelope(False), "choices": choices, "usage": self.usage(collected.completion_tokens)}


class Collected:
    """The events of an answer that is not streamed, gathered per choice."""

    def __init__(self, n: int):
        self.texts, self.tokens, self.reasons = [""] * n, [[] for _ in range(n)], [None] * n
        self.completion_tokens = 0

    @property
    def done(self) -> bool:
        return None not in self.reasons

    def add(self, event) -> None:
        if isinstance(event, Failure):
            raise ApiError(500, event.message, None, "generation_failed")
        if isinstance(event, TextDelta):
            self.texts[event.index] += event.text
            self.tokens[event.index] += event.tokens
        elif isinstance(event, Finish):
            self.reasons[event.index] = event.reason
            self.completion_tokens += event.completion_tokens
