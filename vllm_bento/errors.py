"""How failures leave the service.

    Exception
    └── BentoMLException (bentoml)          /generate before its first chunk: an HTTP status
        └── ServiceUnavailable              503, the engine cannot serve
    BaseException
    └── StreamCutOff                        a started plain-text stream cannot be finished

On ``/v1`` every error is a JSON body in the OpenAI shape (``openai_error``); vLLM's own
errors already have it, and Starlette's (no route, method not allowed) get it from
``http_error``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

ANTHROPIC_PATH = "/v1/messages"
"""vLLM's Anthropic Messages API: its errors take Anthropic's shape, not OpenAI's."""
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                   403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                   429: "rate_limit_error", 503: "overloaded_error", 504: "timeout_error"}
"""Anthropic's error type for each status (docs.anthropic.com, "Errors")."""


def is_anthropic(path: str) -> bool:
    return path == ANTHROPIC_PATH or path.startswith(ANTHROPIC_PATH + "/")


def anthropic_type(status: int) -> str:
    """Anthropic's error type for an HTTP status."""
    return ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def anthropic_error_body(status: int, message: str) -> dict[str, object]:
    """Anthropic's error shape: ``{"type": "error", "error": {type, message}}``."""
    return {"type": "error", "error": {"type": anthropic_type(status), "message": message}}


def anthropic_error(status: int, message: str) -> JSONResponse:
    """A response in the shape Anthropic clients parse (``anthropic_error_body``)."""
    return JSONResponse(anthropic_error_body(status, message), status_code=status)


def as_anthropic_error(status: int, body: bytes) -> bytes:
    """An error body on vLLM's Anthropic route in Anthropic's shape, with Anthropic's type for
    ``status``: vLLM's own Anthropic errors name its exception there (``NotFoundError``), and
    its validation errors, Starlette's 404 and 405 and the forwarder's own 400s come in the
    OpenAI shape. Any other body as it is."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return body
    return json.dumps(anthropic_error_body(status, error["message"])).encode()


def error_response(path: str, status: int, message: str, err_type: str,
                   param: str | None = None) -> JSONResponse:
    """The error in the shape of the API at ``path``: Anthropic's on ``/v1/messages``, OpenAI's
    everywhere else."""
    if is_anthropic(path):
        return anthropic_error(status, message)
    return openai_error(status, message, err_type, param)


def stream_error_frames(path: str, status: int, message: str, err_type: str) -> bytes:
    """The last frames of a server-sent-events stream the server ended early, as the API at
    ``path`` streams an error: Anthropic's ``event: error`` frame on ``/v1/messages``; else
    OpenAI's ``data: {"error": ...}`` followed by ``data: [DONE]``."""
    if is_anthropic(path):
        error = anthropic_error_body(status, message)
        return f"event: error\ndata: {json.dumps(error)}\n\n".encode()
    error = openai_error_body(status, message, err_type)
    return f"data: {json.dumps(error)}\n\ndata: [DONE]\n\n".encode()


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (no route, method not allowed) in the OpenAI shape, where
    Starlette would answer ``{"detail": ...}``: an exception handler for vLLM's app (the
    forwarder reshapes it on ``/v1/messages``). The words of a 404 are OpenAI's own ("Invalid
    URL (GET /v1/x)")."""
    assert isinstance(exc, StarletteHTTPException)
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        message = f"Invalid URL ({where})"
    elif exc.status_code == 405:
        message = f"Method not allowed ({where})"
    else:
        message = str(exc.detail)
    response = openai_error(exc.status_code, message, "invalid_request_error")
    response.headers.update(exc.headers or {})
    return response


def openai_error(status: int, message: str, err_type: str,
                 param: str | None = None) -> JSONResponse:
    """A response in the shape OpenAI clients parse (``openai_error_body``)."""
    return JSONResponse(openai_error_body(status, message, err_type, param), status_code=status)


def openai_error_body(status: int, message: str, err_type: str,
                      param: str | None = None) -> dict[str, object]:
    """OpenAI's error shape: ``{"error": {message, type, param, code}}``; ``param`` names the
    body field at fault, if one is."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": status}}


class StreamCutOff(BaseException):
    """Raised when a started plain-text stream (``/generate``) cannot be finished.

    Its status line is already sent, so the only honest signal left is to close the connection
    without the final chunk of the chunked body; clients then report a broken stream (httpx
    ``RemoteProtocolError``, curl exit 18) instead of taking a short answer for a whole one.
    A BaseException on purpose: BentoML's streaming wrapper catches ``Exception`` and would end
    the response cleanly; this passes through to uvicorn, which closes the connection.
    """


class AsOneWarning(logging.Filter):
    """Rewrites a log record carrying an exception that ``describe`` recognises into one WARNING
    line without traceback (``describe`` returns the line, or None to leave the record as is).
    For libraries that log expected failures at ERROR with a traceback."""

    def __init__(self, describe: Callable[[logging.LogRecord, BaseException], str | None]) -> None:
        super().__init__()
        self.describe = describe

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        line = self.describe(record, exc) if exc is not None else None
        if line is not None:
            record.msg, record.args = "%s", (line,)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def describe_cut_off(record: logging.LogRecord, exc: BaseException) -> str | None:
    """uvicorn logs the ``StreamCutOff`` that closes a cut-off stream as "Exception in ASGI
    application" with a traceback; the cut-off is deliberate and its cause is logged already
    (the gate's request line, the loopback's error)."""
    if isinstance(exc, StreamCutOff):
        return f"Stream cut off without its final chunk: {exc}"
    return None


def log_cut_offs_as_warnings() -> None:
    logging.getLogger("uvicorn.error").addFilter(AsOneWarning(describe_cut_off))
