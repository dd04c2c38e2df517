"""`blu serve`: an OpenAI-compatible API, a playground page and a live view of training, for one run.

    app.py       the routes, the guards around them (key, host, CORS, body size) and OpenAI's error shape
    protocol.py  request bodies read and checked into `Job`s
    chat.py      the transcript template that turns chat messages into a prompt for a base model
    engine.py    continuous batching: one thread stepping one `decode.DecodeBatch` that requests join and leave
    events.py    what passes between them: a `Job` in; `Piece`, `Finish` and `Failure` events out
    shapes.py    OpenAI's response objects built from those events
    server.py    starting it all under uvicorn; settings.py its settings and caps; errors.py OpenAI's error shape
    watch.py     the training view: metrics.jsonl and samples.txt read incrementally
    static/      the page (no outside resource)

The server is a consumer of the Python API (runs.load_run, decode.DecodeBatch, sampling.sample,
generate.StopStrings, the tokenizer's stream decoder); it does not implement generation itself."""

from .settings import ServerSettings

__all__ = ["ServerSettings"]
