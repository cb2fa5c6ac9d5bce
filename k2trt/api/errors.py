"""API errors, and their bodies in the OpenAI and the Anthropic schema.

One exception, :class:`ApiError`, carries an HTTP status, a message and (for OpenAI) the parameter at fault; the
route that caught it writes it in its own API's schema:

- OpenAI: ``{"error": {"message", "type", "param", "code"}}`` (the ``openai`` SDK reads ``body["error"]``; mid-stream
  the same object goes out as one ``data:`` line, which the SDK raises as ``APIError``).
- Anthropic: ``{"type": "error", "error": {"type", "message"}}`` (mid-stream: an ``event: error`` with that body).

Statuses (docs/api.md): 400 malformed or unsupported request, 401 wrong key, 404 unknown model or route, 405 wrong
method, 413 body over the limit, 422 a valid request the model could not process (Triton rejected it: a prompt
longer than the engine takes, a template that fails on it), 429 over the concurrency limit, 500 a bug or a Triton
failure, 503 Triton not reachable or not ready.
"""

from __future__ import annotations

from typing import Any

from k2trt.errors import K2Error

# OpenAI's error "type" by status: its API uses invalid_request_error for 4xx it does not name otherwise.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}

# Anthropic's documented pairs (docs.claude.com/en/api/errors); "invalid_request_error may also be used for other
# 4XX status codes", and 503 (no 529 here: Triton down is not "overloaded") is an api_error.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",
}


class ApiError(K2Error):
    """An error answered to an API client: ``status``, ``message``, the ``param`` at fault (OpenAI), and a short
    machine-readable ``code`` (OpenAI ``error.code``; e.g. ``unsupported_parameter``, ``model_not_found``)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def openai_body(self) -> dict[str, Any]:
        return openai_error_body(self.status, self.message, param=self.param, code=self.code)

    def anthropic_body(self) -> dict[str, Any]:
        return anthropic_error_body(self.status, self.message)


def openai_error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    """``{"error": {"message", "type", "param", "code"}}``."""
    kind = _OPENAI_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def anthropic_error_body(status: int, message: str) -> dict:
    """``{"type": "error", "error": {"type", "message"}}``."""
    kind = _ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def unsupported(params: list[str], why: dict[str, str] | None = None) -> ApiError:
    """400 naming every unsupported parameter the request set (never silently ignored)."""
    why = why or {}
    parts = [f"'{p}'" + (f" ({why[p]})" if p in why else "") for p in params]
    noun = "parameter" if len(params) == 1 else "parameters"
    return ApiError(
        400, f"unsupported {noun}: {', '.join(parts)}", param=params[0], code="unsupported_parameter"
    )


__all__ = ["ApiError", "anthropic_error_body", "bad_request", "openai_error_body", "unsupported"]
