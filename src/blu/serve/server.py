"""Starting the server: the engine, the app, and uvicorn, with the warnings a user should see."""

import sys

from ..errors import BluError
from .app import build_app
from .chat import chat_template_for
from .engine import Engine
from .settings import ServerSettings


def serve(settings: ServerSettings, log=None) -> None:
    import uvicorn

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    if settings.max_batch < 1 or settings.max_queue < 1:  # every request waits in the queue, if only for a step
        raise BluError(f"--max-batch and --max-queue must be at least 1, got {settings.max_batch} and {settings.max_queue}")
    if settings.stream_interval_ms < 0:
        raise BluError(f"--stream-interval must be 0 or more milliseconds, got {settings.stream_interval_ms}")
    engine = Engine(settings.run, settings.device, settings.max_batch, settings.max_queue, settings.max_repetition_window, log,
                    settings.stream_interval_ms / 1000)
    template = chat_template_for(engine.tokenizer, settings.chat_template)
    app = build_app(settings, engine, template)
    if not settings.loopback and not settings.api_key:
        log(f"blu serve: WARNING: listening on {settings.host} without --api-key: anyone who can reach this "
            "machine can use the model")
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    state = "" if engine.ready else " (no weights yet: waiting for training's first evaluation)"
    log(f"blu serve: {settings.run.resolve().name} on http://{host}:{settings.port}/{state}")
    if (ids := getattr(template, "stop_ids", None)) is not None:
        log(f"blu serve: chat with {template.description}; replies end at "
            f"{', '.join(repr(engine.tokenizer.hf.id_to_token(i)) for i in ids)}")
    engine.start()
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                    timeout_graceful_shutdown=2)
    finally:
        engine.stop()
