"""The ASGI app: one method per route, the guards in front of them (guard.py), and OpenAI's
error shape everywhere.

    GET  /                      the playground (static files under /static; public)
    GET  /health                200 when weights are loaded (503 before), active requests; public
    GET  /v1/models             the one model: the run folder's name, context, vocabulary, tokenizer
    POST /v1/completions        OpenAI completions, streamed or not
    POST /v1/chat/completions   OpenAI chat completions on the run's chat template or a transcript (chat.py)
    POST /tokenize              text to the run's token ids, POST /detokenize ids to text, GET
                                /tokenizer_info: vLLM's shapes, which lm-evaluation-harness reads (tokenizer_routes.py)
    GET  /api/training          the training view's data (watch.py)

A request is read into a `Call` (requests.py), its job submitted to the engine, and the events
that come back shaped into OpenAI's objects (responses.py). The engine is passed in: anything
with `submit`, `cancel`, `ready`, `active`, `reloads`, `tokenizer` and `model_config`, as
engine.Engine has; this layer never imports it."""

import asyncio
import json
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .chat import ChatTemplate
from .errors import ApiError, error_body
from .events import Failure, Finish, PromptScores, Refused, TextDelta, coalesce
from .guard import Guard, error_response
from .requests import Call, chat_call, completion_call
from .responses import Collected, Responder
from .settings import ServerSettings
from .tokenizer_routes import detokenize, tokenize, tokenizer_info
from .transport import GONE, EventStream, Outbox, read_body, watch_disconnect
from .watch import TrainingView

STATIC = Path(__file__).parent / "static"
# The page loads nothing from elsewhere; the browser enforces it too.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:", "X-Content-Type-Options": "nosniff"}


class Api:
    """The routes of one server: its settings, its engine and its chat template."""

    def __init__(self, settings: ServerSettings, engine, template: ChatTemplate):
        self.settings, self.engine, self.template = settings, engine, template
        self.model_id = settings.run.resolve().name
        self.training_view = TrainingView(settings.run)
        self.outbox = Outbox()

    def routes(self) -> list:
        return [Route("/", self.page), Route("/health", self.health), Route("/v1/models", self.models),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                Route("/tokenize", self.tokenize, methods=["POST"]), Route("/detokenize", self.detokenize, methods=["POST"]),
                Route("/tokenizer_info", self.tokenizer_info),
                Route("/api/training", self.training), Mount("/static", StaticFiles(directory=STATIC), name="static")]

    async def page(self, request: Request):
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    async def health(self, request: Request):
        engine = self.engine
        body = {"status": "ok" if engine.ready else "loading", "model": self.model_id, "active_requests": engine.active,
                "api_key_required": self.settings.api_key is not None, "weights_reloaded": engine.reloads}
        return JSONResponse(body, status_code=200 if engine.ready else 503)

    async def models(self, request: Request):
        c = self.engine.model_config
        return JSONResponse({"object": "list", "data": [{
            "id": self.model_id, "object": "model", "created": int((self.settings.run / "config.json").stat().st_mtime),
            "owned_by": "blu", "context": c.context, "vocab_size": c.vocab_size, "tokenizer": self.engine.tokenizer.kind,
            "parameters": c.num_parameters(), "chat": self.template.description,
            "chat_template": self.template.template}]})

    async def completions(self, request: Request):
        body = await read_body(request, self.settings.max_body_bytes)
        return await self._answer(request, completion_call(body, self.engine.tokenizer, self.settings, self.model_id))

    async def chat_completions(self, request: Request):
        body = await read_body(request, self.settings.max_body_bytes)
        return await self._answer(request, chat_call(body, self.engine.tokenizer, self.settings, self.model_id,
                                                     self.template))

    async def tokenize(self, request: Request):
        body = await read_body(request, self.settings.max_body_bytes)
        return JSONResponse(tokenize(body, self.engine.tokenizer, self.settings, self.engine.model_config.context))

    async def detokenize(self, request: Request):
        body = await read_body(request, self.settings.max_body_bytes)
        return JSONResponse(detokenize(body, self.engine.tokenizer, self.settings))

    async def tokenizer_info(self, request: Request):
        return JSONResponse(tokenizer_info(self.engine.tokenizer, self.engine.model_config.context))

    async def training(self, request: Request):
        since = request.query_params.get("since", "0")
        return JSONResponse({**self.training_view.read(int(since) if since.isdigit() else 0), "ready": self.engine.ready})

    # answering a completion

    async def _answer(self, request: Request, call: Call):
        queue = asyncio.Queue()
        self.outbox.bind(asyncio.get_running_loop())
        for prompt, job in enumerate(call.jobs):  # called from the engine thread
            job.send = numbered(lambda event: self.outbox.put(queue, event), prompt, call.n)
        try:
            self.engine.submit(*call.jobs)
        except Refused as refused:
            raise ApiError(503, str(refused), code=refused.code, headers={"Retry-After": str(refused.retry_after_s)}) from None
        responder = Responder(call, self.model_id)
        if call.stream:
            return EventStream(self._stream(queue, call, responder), queue, lambda: self.engine.cancel(*call.jobs))
        return await self._collect(request, queue, call, responder)

    async def _collect(self, request: Request, queue: asyncio.Queue, call: Call, responder: Responder):
        watcher = asyncio.create_task(watch_disconnect(request.receive, queue, lambda: self.engine.cancel(*call.jobs)))
        collected = Collected(call.choices)
        try:
            while not collected.done:
                event = await queue.get()
                if event is GONE:
                    return Response(status_code=499)  # nobody reads it
                collected.add(event)
        finally:
            watcher.cancel()
            if not collected.done:
                self.engine.cancel(*call.jobs)
        return JSONResponse(responder.whole(collected))

    async def _stream(self, queue: asyncio.Queue, call: Call, responder: Responder):
        """Lists of payloads: whatever events are ready are sent together, one write per wake-up."""
        yield [json.dumps(chunk) for chunk in responder.opening_chunks()]
        finished = generated = 0
        try:
            while finished < call.choices:
                events = [await queue.get()]
                while not queue.empty():
                    events.append(queue.get_nowait())
                out = []
                for event in coalesce(events):
                    if event is GONE:
                        return
                    if isinstance(event, Failure):  # after the 200: the error as an event, as the client reads it
                        yield out + [json.dumps(error_body(event.message, "server_error", None, "generation_failed"))]
                        return
                    if isinstance(event, TextDelta):
                        out.append(json.dumps(responder.delta_chunk(event)))
                    elif isinstance(event, PromptScores):
                        out.extend(json.dumps(chunk) for chunk in responder.prompt_chunks(event))
                    elif isinstance(event, Finish):
                        finished, generated = finished + 1, generated + event.completion_tokens
                        out.append(json.dumps(responder.finish_chunk(event.index, event.reason)))
                yield out
            yield ([json.dumps(responder.usage_chunk(generated))] if call.include_usage else []) + ["[DONE]"]
        finally:
            if finished < call.choices:
                self.engine.cancel(*call.jobs)


def numbered(put, prompt: int, n: int):
    """The send of prompt `prompt`'s job: its events numbered as the answer numbers its choices
    (choice i of prompt p is p * n + i), before `put`. Prompt 0's are already."""
    if prompt == 0:
        return put

    def send(event):
        if isinstance(event, (TextDelta, Finish)):
            event.index += prompt * n
        elif isinstance(event, PromptScores):
            event.prompt = prompt
        put(event)

    return send


async def api_error(request: Request, error: ApiError):
    return error_response(error)


async def http_error(request: Request, error: HTTPException):
    return error_response(ApiError(error.status_code, str(error.detail), None, None))


async def server_error(request: Request, error: Exception):
    return JSONResponse(error_body(f"internal error: {type(error).__name__}"), status_code=500)


def build_app(settings: ServerSettings, engine, template: ChatTemplate) -> Starlette:
    """The app for `engine` (see the module docstring), behind CORS (closed unless origins are
    named) and the guards."""
    cors = [Middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                       allow_headers=["Authorization", "Content-Type"])] if settings.cors_origins else []
    return Starlette(routes=Api(settings, engine, template).routes(), middleware=cors + [Middleware(Guard, settings=settings)],
                     exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error})
