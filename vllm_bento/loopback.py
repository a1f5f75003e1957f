"""``/generate``: a prompt in, the model's text streamed out, by way of this service's own
OpenAI route (as in BentoML's example), through one reused ``openai.AsyncOpenAI`` client.

Errors before the first chunk become an HTTP status. After the first chunk the status is already
sent, so the stream is cut off instead of finished: the response ends without the final chunk of
its chunked encoding, which clients report as an error (httpx ``RemoteProtocolError``, curl exit
18), never as a complete answer.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from http import HTTPStatus

import httpx2
import openai
from bentoml.exceptions import BentoMLException, ServiceUnavailable

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "Who are you? Please respond in pirate speak!"


class StreamInterrupted(BaseException):
    """Raised after the first chunk when the answer cannot be finished.

    A BaseException on purpose: BentoML's streaming wrapper catches ``Exception`` and then ends
    the response as if it were complete; this passes through it to uvicorn, which closes the
    connection without the closing chunk so that the client sees the stream broke.
    """


def base_url_for(server: tuple[str, int] | None) -> str:
    """The ``/v1`` URL of this very server, from the address the current request came in on, so
    the loopback follows whatever port the service is really served on."""
    if server is None:
        raise ServiceUnavailable("cannot tell this server's address to loop /generate back to it")
    host, port = server
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/v1"


def upstream_error(exc: openai.APIStatusError) -> BentoMLException:
    """The exception that gives the client the status vLLM gave, client errors kept as they are
    and server errors as 503 (the engine cannot serve now, so retrying later may help)."""
    if exc.status_code < 500:
        return BentoMLException(exc.message, error_code=HTTPStatus(exc.status_code))
    return ServiceUnavailable(f"the model engine failed: {exc.message}")


class LoopbackChat:
    """Streams chat completions from this service's own ``/v1``."""

    def __init__(
        self,
        model: str,
        temperature: float,
        timeout: float = 300.0,
        http_client: httpx2.AsyncClient | None = None,
    ) -> None:
        self.model = model
        self.temperature = temperature
        self.timeout = timeout
        self._http_client = http_client  # tests pass one with a fake transport
        self._client: openai.AsyncOpenAI | None = None

    def client(self, base_url: str) -> openai.AsyncOpenAI:
        """The one client, created on first use when the served address is known."""
        if self._client is None or str(self._client.base_url).rstrip("/") != base_url:
            # The key is unused while /v1 is open, but the SDK requires one.
            self._client = openai.AsyncOpenAI(
                base_url=base_url,
                api_key="loopback",
                timeout=self.timeout,
                max_retries=0,
                http_client=self._http_client,
            )
        return self._client

    async def stream(self, base_url: str, prompt: str, max_tokens: int) -> AsyncIterator[str]:
        """Yield the answer's text as it is generated.

        Raises:
            BentoMLException: before the first chunk, with the status to answer with.
            StreamInterrupted: after the first chunk, when the answer cannot be completed.
        """
        started = False
        try:
            chunks = await self.client(base_url).chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=max_tokens,
                temperature=self.temperature,
                stream=True,
            )
            async for chunk in chunks:
                if chunk.choices and (text := chunk.choices[0].delta.content):
                    started = True
                    yield text
        except openai.APIError as exc:  # the SDK wraps transport errors in APIConnectionError
            if started:
                logger.exception("/generate stream cut off after it started")
                raise StreamInterrupted(str(exc)) from exc
            if isinstance(exc, openai.APIStatusError):
                raise upstream_error(exc) from exc
            logger.exception("/generate could not reach the model engine")
            raise ServiceUnavailable("the model engine is unreachable") from exc
