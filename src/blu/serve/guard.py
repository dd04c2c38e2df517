"""The guards in front of every route (pure ASGI): on a loopback address the Host header must
name loopback too, so that a web page cannot reach the server through DNS rebinding (as Ollama
checks); with --api-key every /v1 and /api route needs `Authorization: Bearer KEY`, while
/health and the page stay public (the page asks for the key)."""

import hmac

from starlette.responses import JSONResponse

from .errors import ApiError
from .settings import ServerSettings

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def host_name(host: str) -> str:
    """The name in a Host header, without the port: "[::1]:8000" -> "[::1]", "localhost:8000" -> "localhost"."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    """Host check on loopback and the Bearer key, before any route runs."""

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
