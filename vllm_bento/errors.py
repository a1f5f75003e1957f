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

from starlette.responses import JSONResponse


def openai_error(status: int, message: str, err_type: str) -> JSONResponse:
    """A response in the shape OpenAI clients parse: ``{"error": {message, type, param, code}}``."""
    body = {"error": {"message": message, "type": err_type, "param": None, "code": status}}
    return JSONResponse(body, status_code=status)


class StreamCutOff(BaseException):
    """Raised when a started plain-text stream (``/generate``) cannot be finished.

    Its status line is already sent, so the only honest signal left is to close the connection
    without the final chunk of the chunked body; clients then report a broken stream (httpx
    ``RemoteProtocolError``, curl exit 18) instead of taking a short answer for a whole one.
    A BaseException on purpose: BentoML's streaming wrapper catches ``Exception`` and would end
    the response cleanly; this passes through to uvicorn, which closes the connection.
    """

