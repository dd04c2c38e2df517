"""Between HTTP and the engine thread: the request body read under its cap, the engine's events
handed to the event loop, server-sent events, and the client's disconnect noticed at once."""

import asyncio
import json
import threading

from starlette.requests import Request

from .errors import ApiError

GONE = object()  # queued when the client disconnects


async def read_body(request: Request, cap: int) -> dict:
    """The JSON object a request holds, refused (413) past `cap` bytes whether its length is
    announced or not, and (400) when it is not a JSON object."""
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


async def watch_disconnect(receive, queue: asyncio.Queue, on_gone) -> None:
    """Wait for the client to go away, then call `on_gone` and queue GONE (run it as a task)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    on_gone()
    queue.put_nowait(GONE)


class EventStream:
    """Server-sent events: each payload as `data: ...` and a blank line. `payloads` yields lists
    of them, each list written at once. Written as a plain ASGI response so that it watches for
    the client's disconnect itself (whatever the ASGI version) and tells the engine at once."""

    def __init__(self, payloads, queue: asyncio.Queue, on_gone):
        self.payloads, self.queue, self.on_gone = payloads, queue, on_gone

    async def __call__(self, scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]})
        watcher = asyncio.create_task(watch_disconnect(receive, self.queue, self.on_gone))
        try:
            async for batch in self.payloads:
                await send({"type": "http.response.body", "more_body": True,
                            "body": "".join(f"data: {p}\n\n" for p in batch).encode()})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away mid-write
            self.on_gone()
        finally:
            watcher.cancel()
