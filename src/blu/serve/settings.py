"""What a server is started with, and the caps that keep one request from taking it over."""

from dataclasses import dataclass
from pathlib import Path

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServerSettings:
    run: Path
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "cpu"
    api_key: str | None = None  # Bearer key for /v1 and /api; None = open (loopback only, by default)
    cors_origins: tuple[str, ...] = ()  # origins a browser may call the API from; none = same origin only
    chat_template: Path | None = None  # a text file holding the template (see chat.py); None = the plain transcript
    max_batch: int = 64  # rows (choices) decoded together; more waiting requests queue
    max_queue: int = 256  # requests waiting for a row; beyond it, 503 with Retry-After
    # Caps on one request, against the denial of service that unbounded values caused elsewhere
    # (gpt4all #3635, llama.cpp #19367): answered with 400, not clamped, so a client sees why.
    max_tokens: int = 8192  # per choice; generation has no context limit, so this is the only one
    max_n: int = 16
    max_prompts: int = 1024  # prompts in one completions request (each is scored or continued n times)
    max_prompt_chars: int = 100_000  # only the last context of it is read, but it is encoded whole
    max_body_bytes: int = 1 << 20  # 413 beyond it
    max_stop: int = 8  # stop strings per request (OpenAI's limit is 4; the chat template adds its own)
    max_repetition_window: int = 256  # also the tokens each row of the batch keeps for the repetition penalty

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS
