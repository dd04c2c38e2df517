"""Responses: OpenAI's objects, as the official `openai` client reads them (its types/completion*.py
and types/chat/chat_completion*.py), built from the engine's events: one `Responder` per request
builds its chunks when streamed, and `Collected` gathers the events of an answer that is not.

Choice c of an answer is choice c % n of prompt c // n (requests.Call). With echo and logprobs,
a choice's log-probabilities are its prompt's tokens' (the first one's null: nothing predicts
it), then its own."""

import secrets
import time

from .errors import ApiError
from .events import Failure, Finish, PromptScores, TextDelta, TokenInfo
from .requests import Call


class Responder:
    """Builds the objects of one request's answer."""

    def __init__(self, call: Call, model_id: str):
        self.call, self.model_id = call, model_id
        self.chat = call.kind == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())
        # where each prompt's completions begin in the text returned
        self.text_starts = [len(text) if call.echo else 0 for text in call.texts]

    def _envelope(self, chunk: bool) -> dict:
        kind = "chat.completion.chunk" if chunk else "chat.completion"
        return {"id": self.id, "object": kind if self.chat else "text_completion", "created": self.created,
                "model": self.model_id, "system_fingerprint": None}

    def usage(self, completion_tokens: int) -> dict:
        prompt = self.call.prompt_tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": prompt + completion_tokens}

    def logprobs(self, tokens: list[TokenInfo], index: int = 0, prompt: list[TokenInfo] = ()) -> dict | None:
        """Chat's `bytes` are each token's own (a byte token holds part of a character, whose
        text alone is U+FFFD); completions' text_offset is where its text begins in `text`, the
        generated `tokens` of choice `index` after its `prompt`'s (echo)."""
        if self.call.logprobs is None:
            return None
        if self.chat:
            return {"content": [{"token": t.chosen.text, "logprob": t.chosen.logprob, "bytes": list(t.chosen.bytes),
                                 "top_logprobs": [{"token": a.text, "logprob": a.logprob, "bytes": list(a.bytes)}
                                                  for a in t.top]}
                                for t in tokens], "refusal": None}
        start = self.text_starts[index // self.call.n]
        every = [*prompt, *tokens]
        return {"tokens": [t.chosen.text for t in every], "token_logprobs": [t.chosen.logprob for t in every],
                "top_logprobs": [None if t.top is None else {a.text: a.logprob for a in t.top} for t in every],
                "text_offset": [t.offset for t in prompt] + [start + t.offset for t in tokens]}

    # streamed

    def opening_chunks(self) -> list[dict]:
        """Chat: the assistant role first, per choice; completions with echo: the prompt (with
        logprobs, when its scores come: prompt_chunks)."""
        if self.chat:
            return [self._chunk(i, {"role": "assistant", "content": ""}) for i in range(self.call.choices)]
        if self.call.echo:
            return [self._chunk(c, self.call.texts[c // self.call.n]) for c in range(self.call.choices)
                    if self.call.jobs[c // self.call.n].score is None]
        return []

    def prompt_chunks(self, scores: PromptScores) -> list[dict]:
        """The echoed prompt of each choice of prompt `scores.prompt`, with its log-probabilities."""
        n, p = self.call.n, scores.prompt
        return [self._chunk(c, self.call.texts[p], self.logprobs([], c, scores.tokens)) for c in range(p * n, p * n + n)]

    def delta_chunk(self, delta: TextDelta) -> dict:
        content = {"content": delta.text} if self.chat else delta.text
        return self._chunk(delta.index, content, self.logprobs(delta.tokens, delta.index))

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
            prompt = index // self.call.n
            logprobs = self.logprobs(tokens, index, collected.prompts.get(prompt, ()))
            if self.chat:
                choices.append({"index": index, "message": {"role": "assistant", "content": text, "refusal": None},
                                "logprobs": logprobs, "finish_reason": reason})
            else:
                text = (self.call.texts[prompt] if self.call.echo else "") + text
                choices.append({"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason})
        return {**self._envelope(False), "choices": choices, "usage": self.usage(collected.completion_tokens)}


class Collected:
    """The events of an answer that is not streamed, gathered per choice."""

    def __init__(self, n: int):
        self.texts, self.tokens, self.reasons = [""] * n, [[] for _ in range(n)], [None] * n
        self.prompts: dict[int, list[TokenInfo]] = {}  # each scored prompt's tokens
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
        elif isinstance(event, PromptScores):
            self.prompts[event.prompt] = event.tokens
