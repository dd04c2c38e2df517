"""The ASGI app: routes, the guards in front of them, and OpenAI's error shape everywhere.

    GET  /                      the playground (static files under /static; public)
    GET  /health                200 when weights are loaded (503 before), active requests; public
    GET  /v1/models             the one model: the run folder's name, context, vocabulary, tokenizer
    POST /v1/completions        OpenAI completions, streamed or not
    POST /v1/chat/completions   OpenAI chat completions on the transcript template (chat.py)
    GET  /api/training          the training view's data (watch.py)

With --api-key every /v1 and /api route needs `Authorization: Bearer KEY`; /health and the page
stay public, and the page asks for the key. On a loopback address the Host header must name
loopback too, so that a web page cannot reach the server through DNS rebinding (as Ollama checks)."""

import asyncio
import hmac
import json
from pathlib import Path
import threading

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .chat import ChatTemplate
from .engine import Engine
from .errors import ApiError, error_body
from .events import Failure, Finish, Piece
from .protocol import Call, chat_call, completion_call
from .settings import ServerSettings
from .shapes import Shaper
from .watch import TrainingView

STATIC = Path(__file__).parent / "static"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
# The page loads nothing from elsewhere; the browser enforces it too.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:", "X-Content-Type-Options": "nosniff"}
GONE = object()  # queued when the client disconnects


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def host_name(host: str) -> str:
    """The name in a Host header, without the port: "[::1]:8000" -> "[::1]", "localhost:8000" -> "localhost"."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    """Host check on loopback and the Bearer key, before any route runs (pure ASGI)."""

    def __init__(self, app, settings: ServerSettings):
        self.app, self.settings = app, settings
        self.expected = f"Bearer {settings.api_key}".encode() if settings.api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        error = None
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        if self.settings.loopback and host not in LOOPBACK_NAMES:
            error = ApiError(400, f"this server answers on loopback only, not for host {host!r}", None, "bad_host")
        elif (self.expected and scope["method"] != "OPTIONS" and scope["path"].startswith(("/v1/", "/api/"))
              and not hmac.compare_digest(headers.get(b"authorization", b""), self.expected)):
            error = ApiError(401, "a valid API key is needed: Authorization: Bearer KEY", None, "invalid_api_key")
        if error:
            return await error_response(error)(scope, receive, send)
        await self.app(scope, receive, send)


class Outbox:
    """Events from the engine thread to the requests' queues on the event loop, handed over in
    one wake-up of the loop per batch of events rather than one per token per request."""

    def __init__(self):
        self.loop, self.items, self.lock, self.scheduled = None, [], threading.Lock(), False

    def bind(self, loop) -> None:
        self.loop = loop

    def put(self, queue: asyncio.Queue, event) -> None:
        with self.lock:
            self.items.append((queue, event))
            if self.scheduled:
                return
            self.scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the event loop has closed: the server is shutting down
            pass

    def _deliver(self) -> None:
        with self.lock:
            items, self.items, self.scheduled = self.items, [], False
        for queue, event in items:
            queue.put_nowait(event)


class EventStream:
    """Server-sent events: each payload as `data: ...` and a blank line, ending with `data: [DONE]`.
    Written as a plain ASGI response so that it watches for the client's disconnect itself
    (whatever the ASGI version) and tells the engine at once."""

    def __init__(self, payloads, queue: asyncio.Queue, on_gone):
        self.payloads, self.queue, self.on_gone = payloads, queue, on_gone

    async def __call__(self, scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]})

        async def watch():
            while (await receive())["type"] != "http.disconnect":
                pass
            self.on_gone()
            self.queue.put_nowait(GONE)

        watcher = asyncio.create_task(watch())
        try:
            async for batch in self.payloads:
                await send({"type": "http.response.body", "more_body": True,
                            "body": "".join(f"data: {p}\n\n" for p in batch).encode()})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away mid-write
            self.on_gone()
        finally:
            watcher.cancel()


def build_app(settings: ServerSettings, engine: Engine, template: ChatTemplate) -> Starlette:
    model_id = settings.run.resolve().name
    tokenizer = engine.tokenizer
    training = TrainingView(settings.run)

    async def read_body(request: Request) -> dict:
        cap = settings.max_body_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > cap:
            raise ApiError(413, f"the body is {int(length):,} bytes; this server takes at most {cap:,}", None, "body_too_large")
        data = b""
        async for chunk in request.stream():
            data += chunk
            if len(data) > cap:
                raise ApiError(413, f"the body is over {cap:,} bytes, the most this server takes", None, "body_too_large")
        try:
            body = json.loads(data)
        except ValueError as error:
            raise ApiError(400, f"the body is not valid JSON ({error})", None, "invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object", None, "invalid_json")
        return body

    outbox = Outbox()

    async def answer(request: Request, call: Call):
        queue = asyncio.Queue()
        outbox.bind(asyncio.get_running_loop())
        call.job.send = lambda event: outbox.put(queue, event)  # called from the engine thread
        engine.submit(call.job)
        shaper = Shaper(call, model_id)
        if call.stream:
            return EventStream(stream_payloads(queue, call, shaper), queue, lambda: engine.cancel(call.job))
        return await collect(request, queue, call, shaper)

    async def collect(request: Request, queue: asyncio.Queue, call: Call, shaper: Shaper):
        async def watch():
            while (await request.receive())["type"] != "http.disconnect":
                pass
            engine.cancel(call.job)
            queue.put_nowait(GONE)

        watcher = asyncio.create_task(watch())
        n = call.job.n
        texts, tokens, reasons, generated = [""] * n, [[] for _ in range(n)], [None] * n, 0
        try:
            while None in reasons:
                event = await queue.get()
                if event is GONE:
                    return Response(status_code=499)  # nobody reads it
                if isinstance(event, Failure):
                    raise ApiError(500, event.message, None, "generation_failed")
                if isinstance(event, Piece):
                    texts[event.index] += event.text
                    tokens[event.index] += event.tokens
                elif isinstance(event, Finish):
                    reasons[event.index], generated = event.reason, generated + event.completion_tokens
        finally:
            watcher.cancel()
            if None in reasons:
                engine.cancel(call.job)
        return JSONResponse(shaper.whole(texts, tokens, reasons, generated))

    async def stream_payloads(queue: asyncio.Queue, call: Call, shaper: Shaper):
        """Lists of payloads: whatever events are ready are sent together, one write per wake-up."""
        yield [json.dumps(chunk) for chunk in shaper.opening_chunks()]
        finished = generated = 0
        try:
            while finished < call.job.n:
                events = [await queue.get()]
                while not queue.empty():
                    events.append(queue.get_nowait())
                out = []
                for event in events:
                    if event is GONE:
                        return
                    if isinstance(event, Failure):  # after the 200: the error as an event, as the client reads it
                        yield out + [json.dumps(error_body(event.message, "server_error", None, "generation_failed"))]
                        return
                    if isinstance(event, Piece):
                        out.append(json.dumps(shaper.piece_chunk(event)))
                    elif isinstance(event, Finish):
                        finished, generated = finished + 1, generated + event.completion_tokens
                        out.append(json.dumps(shaper.finish_chunk(event.index, event.reason)))
                yield out
            yield ([json.dumps(shaper.usage_chunk(generated))] if call.include_usage else []) + ["[DONE]"]
        finally:
            if finished < call.job.n:
                engine.cancel(call.job)

    async def completions(request: Request):
        return await answer(request, completion_call(await read_body(request), tokenizer, settings, model_id))

    async def chat_completions(request: Request):
        return await answer(request, chat_call(await read_body(request), tokenizer, settings, model_id, template))

    async def models(request: Request):
        c = engine.model_config
        return JSONResponse({"object": "list", "data": [{
            "id": model_id, "object": "model", "created": int((settings.run / "config.json").stat().st_mtime),
            "owned_by": "blu", "context": c.context, "vocab_size": c.vocab_size, "tokenizer": tokenizer.kind,
            "parameters": c.num_parameters(), "chat": "transcript template (a base model)",
            "chat_template": template.template}]})

    async def health(request: Request):
        body = {"status": "ok" if engine.ready else "loading", "model": model_id, "active_requests": engine.active,
                "api_key_required": settings.api_key is not None, "weights_reloaded": engine.reloads}
        return JSONResponse(body, status_code=200 if engine.ready else 503)

    async def training_data(request: Request):
        since = request.query_params.get("since", "0")
        return JSONResponse({**training.read(int(since) if since.isdigit() else 0), "ready": engine.ready})

    async def page(request: Request):
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    async def api_error(request: Request, error: ApiError):
        return error_response(error)

    async def http_error(request: Request, error: HTTPException):
        return error_response(ApiError(error.status_code, str(error.detail), None, None))

    async def server_error(request: Request, error: Exception):
        return JSONResponse(error_body(f"internal error: {type(error).__name__}"), status_code=500)

    middleware = [Middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                             allow_headers=["Authorization", "Content-Type"])] if settings.cors_origins else []
    routes = [Route("/", page), Route("/health", health), Route("/v1/models", models),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Route("/api/training", training_data), Mount("/static", StaticFiles(directory=STATIC), name="static")]
    return Starlette(routes=routes, middleware=middleware + [Middleware(Guard, settings=settings)],
                     exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error})

