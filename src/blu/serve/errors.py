"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}, which the `openai`
client turns into its exceptions (BadRequestError for 400, and so on)."""

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
         503: "service_unavailable"}


class ApiError(Exception):
    """A request the server refuses, with the HTTP status to answer it with."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, TYPES.get(self.status, "server_error"), self.param, self.code)


def error_body(message: str, type_: str = "server_error", param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
