"""How failures leave the service.

    Exception
    └── BentoMLException (bentoml)          /generate before its first chunk: an HTTP status
        └── ServiceUnavailable              503, the engine cannot serve
    BaseException
    └── StreamCutOff                        a started plain-text stream cannot be finished

On ``/v1`` every error is a JSON body in the OpenAI shape (``openai_error``); vLLM's own
errors already have it.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse


def openai_error(status: int, message: str, err_type: str) -> JSONResponse:
    """A response in the shape OpenAI clients parse: ``{"error": {message, type, param, code}}``."""
    body = {"error": {"message": message, "type": err_type, "param": None, "code": status}}
    return JSONResponse(body, status_code=status)


async def http_exception_as_openai_error(request: Request, exc: Exception) -> JSONResponse:
    """vLLM's app answers some framework errors FastAPI's way (``{"detail": ...}``), e.g. a body
    that is not UTF-8; give them the OpenAI shape with the same status."""
    assert isinstance(exc, HTTPException)
    err_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
    response = openai_error(exc.status_code, str(exc.detail), err_type)
    response.headers.update(exc.headers or {})
    return response


class StreamCutOff(BaseException):
    """Raised when a started plain-text stream (``/generate``) cannot be finished.

    Its status line is already sent, so the only honest signal left is to close the connection
    without the final chunk of the chunked body; clients then report a broken stream (httpx
    ``RemoteProtocolError``, curl exit 18) instead of taking a short answer for a whole one.
    A BaseException on purpose: BentoML's streaming wrapper catches ``Exception`` and would end
    the response cleanly; this passes through to uvicorn, which closes the connection.
    """

