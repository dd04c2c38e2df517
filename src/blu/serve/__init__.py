"""`blu serve`: an OpenAI-compatible API, a playground page and a live view of training, for one run.

In layers, as vLLM's and llama.cpp's servers are: requests in, the engine, responses out.

    app.py        the routes, one method each of `Api`, behind the guards and OpenAI's error shape
    guard.py      the guards in front of every route: the Host check on loopback, the API key
    requests.py   request bodies read and checked into a `Call`: the engine's `Job` and how to answer it
    responses.py  OpenAI's response objects and stream chunks, built from the engine's events
    transport.py  the body under its cap, events handed from the engine thread, server-sent events
    events.py     what passes between the API and the engine: a `Job` in; `TextDelta`, `Finish` and
                  `Failure` events out; `Refused`; the only module both sides import
    engine.py     continuous batching: one thread stepping one `decode.DecodeBatch` that jobs join and leave
    choice.py     a row of that batch: its generator, its text stream, the text it owes its client (paced)
    chat.py       chat messages into a prompt: the run's own chat template, or a transcript for a base model
    server.py     starting it all under uvicorn; settings.py its settings and caps; errors.py OpenAI's error shape
    watch.py      the training view's data: metrics.jsonl and samples.txt, read at each poll of the page
    static/       the page (no outside resource)

The API layer (app, guard, requests, responses, transport) never imports the engine; the engine
knows nothing of HTTP. The server is a consumer of the Python API (runs.load_run,
decode.DecodeBatch, sampling.sample, text_stream.TextStream for the text of each choice); it does
not implement generation itself."""

from .settings import ServerSettings

__all__ = ["ServerSettings"]
