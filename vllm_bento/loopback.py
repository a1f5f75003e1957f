"""``/generate``: a prompt in, the model's text streamed out, by way of this service's own
OpenAI route (as in BentoML's example), through one reused ``openai.AsyncOpenAI`` client, whose
requests reach ``/v1`` in-process (``vllm_bento.in_process``).

Errors before the first chunk become an HTTP status. After the first chunk the status is already
sent, so the stream is cut off instead of finished: the response ends without the final chunk of
its chunked encoding, which clients report as an error (httpx ``RemoteProtocolError``, curl exit
18), never as a complete answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

import httpx2
import openai
from bentoml.exceptions import BentoMLException, ServiceUnavailable
from starlette.types import ASGIApp

from vllm_bento.errors import StreamCutOff
from vllm_bento.gate import LOOPBACK_HEADER
from vllm_bento.in_process import InProcessTransport

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "Who are you? Please respond in pirate speak!"
COMPLETE = ("stop", "length")  # finish reasons of an answer that ended normally

BASE_URL = "http://in-process/v1"
"""The loopback client's base URL. Its transport hands every request to the app in this
process, so the host is only what that app sees in ``Host``."""


def upstream_error(exc: openai.APIStatusError) -> BentoMLException:
    """The exception that gives the client the status vLLM gave, client errors kept as they are
    and server errors as 503 (the engine cannot serve now, so retrying later may help)."""
    if exc.status_code < 500:
        return BentoMLException(exc.message, error_code=HTTPStatus(exc.status_code))
    return ServiceUnavailable(f"the model engine failed: {exc.message}")


class LoopbackChat:
    """Streams chat completions from this service's own ``/v1``: ``app`` is the ASGI app that
    serves it (the runtime gives the gate in front of the ``/v1`` forwarder), reached
    in-process through ``vllm_bento.in_process``. Unit tests give ``http_client`` instead, with
    a fake transport."""

    def __init__(
        self,
        model: str,
        temperature: float,
        loopback_token: str,
        app: ASGIApp | None = None,
        timeout: float | None = None,
        http_client: httpx2.AsyncClient | None = None,
    ) -> None:
        self.model = model
        self.temperature = temperature
        self.loopback_token = loopback_token
        self.timeout = timeout
        if http_client is None:
            if app is None:
                raise ValueError("LoopbackChat needs the app to loop back to (or an http_client)")
            http_client = httpx2.AsyncClient(transport=InProcessTransport(app))
        self._http_client = http_client
        self._client: openai.AsyncOpenAI | None = None

    @property
    def client(self) -> openai.AsyncOpenAI:
        """The one client, created on first use (inside the server's event loop)."""
        if self._client is None:
            # The gate knows this server's own calls by the secret header: they need no API key
            # (the SDK insists on one, so it gets a placeholder) and take no second slot.
            self._client = openai.AsyncOpenAI(
                base_url=BASE_URL,
                api_key="loopback",
                default_headers={LOOPBACK_HEADER: self.loopback_token},
                timeout=self.timeout,
                max_retries=0,
                http_client=self._http_client,
            )
        return self._client

    async def aclose(self) -> None:
        """End the requests still running and close the client (at shutdown)."""
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def stream(self, prompt: str, max_tokens: int,
                     request_id: str | None = None) -> AsyncIterator[str]:
        """Yield the answer's text as it is generated; the chat request carries ``request_id``
        as its ``X-Request-Id`` when given.

        Raises:
            BentoMLException: before the first chunk, with the status to answer with.
            StreamCutOff: after the first chunk, when the answer cannot be completed.
        """
        started = False
        finish: str | None = None
        try:
            # The SDK's raw stream: it still sends the request, maps error statuses to its
            # exceptions and closes the response when left early (the transport then tells
            # vLLM's app that the client left, and vLLM aborts the engine request), but each
            # SSE frame is read with json.loads instead of becoming a pydantic model, the
            # largest cost per token of /generate (py-spy, make bench-layer).
            async with self.client.chat.completions.with_streaming_response.create(
                model=self.model,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=max_tokens,
                temperature=self.temperature,
                stream=True,
                stream_options={"include_usage": True},  # token counts for the request log
                extra_headers={"X-Request-Id": request_id} if request_id else None,
            ) as response:
                async for data in sse_data(response.iter_bytes()):
                    if "error" in data:
                        raise openai.APIError(str(data["error"].get("message", data["error"])),
                                              response.http_request, body=data)
                    choice = (data.get("choices") or [None])[0]
                    if choice is None:
                        continue
                    finish = choice.get("finish_reason") or finish
                    if text := (choice.get("delta") or {}).get("content"):
                        started = True
                        yield text
        # The SDK wraps errors of the request itself in APIConnectionError; a connection lost
        # mid-stream surfaces as httpx's own error, a mangled frame as a JSON error.
        except (openai.APIError, httpx2.HTTPError, json.JSONDecodeError) as exc:
            if started:
                logger.exception("/generate stream cut off after it started")
                raise StreamCutOff(str(exc)) from exc
            if isinstance(exc, openai.APIStatusError):
                raise upstream_error(exc) from exc
            logger.exception("/generate could not reach the model engine")
            raise ServiceUnavailable("the model engine is unreachable") from exc
        if finish not in COMPLETE:
            # e.g. "abort": the engine gave up on the request (shutdown, engine failure).
            logger.error("/generate ended with finish_reason=%s; cutting the stream off", finish)
            raise StreamCutOff(f"generation ended with finish_reason={finish}")


async def sse_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of an OpenAI stream's ``data:`` lines, up to ``data: [DONE]``, from the
    body's bytes as they come (a line may span chunks). Lines are split here rather than by
    httpx's ``aiter_lines``, whose text decoding layers cost more per token than the split
    (py-spy, ``python -m bench.layer.inprocess``)."""
    pending = b""
    async for chunk in chunks:
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()  # also the "\r" of a "\r\n" line end
            if payload == b"[DONE]":
                return
            yield json.loads(payload)
