"""Helpers for the `blu serve` tests (not a test module): a tiny trained run, a server started
as a subprocess on a free port (or in a thread of the test, around an engine the test can reach
into), a module fixture of one, and the official `openai` client in strict mode."""

from pathlib import Path
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

TINY_TRAIN = ["--tokenizer", "char", "--dim", "32", "--n-layer", "2", "--n-head", "4", "--hidden-dim", "64", "--context", "32",
              "--batch-size", "8", "--lr", "3e-3"]


def corpus(folder: Path, shakespeare: Path, chars: int = 60_000) -> Path:
    path = folder / "corpus.txt"
    path.write_text(shakespeare.read_text(encoding="utf-8")[:chars], encoding="utf-8")
    return path


def train_command(data: Path, out: Path, iters: int, eval_every: int) -> list[str]:
    return [sys.executable, "-m", "blu", "train", "--data", str(data), "--out", str(out), "--iters", str(iters),
            "--eval-every", str(eval_every), *TINY_TRAIN]


def train_tiny(data: Path, out: Path, iters: int = 20) -> Path:
    done = subprocess.run(train_command(data, out, iters, iters), capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise RuntimeError(f"blu train failed ({done.returncode}): {done.stderr[-2000:]}")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`blu serve --run RUN ARGS...` in a subprocess; stderr goes to a file for the tests to read.
    `env`: the process's environment (default: this one's), e.g. another PYTHONPATH to serve another tree."""

    def __init__(self, run: Path, *args: str, wait_ready: bool = True, log: Path | None = None, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log or run.parent / f"serve-{self.port}.log"
        command = [sys.executable, "-m", "blu", "serve", "--run", str(run), "--port", str(self.port), *args]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"), env=env)
        self.wait(ready=wait_ready)

    def wait(self, ready: bool, timeout: float = 90) -> None:
        """Until the server answers /health (with 200 if `ready`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"blu serve exited: {self.log.read_text()}")
            try:
                status = httpx.get(self.url + "/health", timeout=2).status_code
                if status == 200 or not ready:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"blu serve did not become ready: {self.log.read_text()}")

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=5).json()

    def wait_idle(self, timeout: float = 10) -> dict:
        """/health once no request is active (or the last answer after `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            health = self.health()
            if health["active_requests"] == 0 or time.monotonic() > deadline:
                return health
            time.sleep(0.05)

    def client(self, api_key: str = "none", strict: bool = True):
        return openai_client(self.url, api_key, strict)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def openai_client(url: str, api_key: str = "none", strict: bool = True):
    """The official client. Strict: every response must parse into the client's own types.
    Streamed *completions* need strict=False: the client types their finish_reason as never
    null, while OpenAI's own stream (and vLLM's, and blu's) sends null until the last chunk.
    No retries, so that a 429 or 503 is seen as it is."""
    from openai import OpenAI

    return OpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0, timeout=60, _strict_response_validation=strict)


def server_fixture(*args: str):
    """A module fixture: `blu serve` on the session's served run with `args`, stopped after the module."""

    @pytest.fixture(scope="module")
    def server(served_run):
        with Server(served_run, *args) as server:
            yield server

    return server


class ThreadServer:
    """The app under uvicorn in a thread of this process, around its own engine, which the test
    can reach into (to make it fail); used as a context manager."""

    def __init__(self, run: Path, capacity: int = 4, max_queue: int = 4):
        import uvicorn

        from blu.serve.app import build_app
        from blu.serve.chat import ChatTemplate
        from blu.serve.engine import Engine
        from blu.serve.settings import ServerSettings

        settings = ServerSettings(run=run, port=free_port())
        self.url = f"http://127.0.0.1:{settings.port}"
        self.engine = Engine(run, "cpu", capacity=capacity, max_queue=max_queue)
        self.server = uvicorn.Server(uvicorn.Config(build_app(settings, self.engine, ChatTemplate()), host="127.0.0.1",
                                                    port=settings.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "ThreadServer":
        self.engine.start()
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the app did not start under uvicorn")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.engine.stop()

    def client(self, strict: bool = True):
        return openai_client(self.url, "none", strict)
