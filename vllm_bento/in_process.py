"""An httpx transport that sends each request to an ASGI app in this process and streams its
response back as the app sends it: ``/generate``'s loopback to this service's own ``/v1``
without a socket.

Why: under load the loopback through a socket cost ``/generate`` about ten times what chat costs
per chunk in the service's CPU (py-spy on ``make bench-layer``: uvicorn writing both streams,
the event loop, and the client's HTTP stack reading the inner stream back, together most of the
worker's time). httpx's own ``ASGITransport`` cannot stand in: it returns the response only once
the app has sent all of it, so nothing would stream.

It behaves as the socket did, as far as the loopback can tell:
- the request goes through the app it is given (for the loopback, the gate in front of the
  ``/v1`` forwarder: its log line and loopback token apply) with a context of its own;
- a response is returned at ``http.response.start``; its body streams chunk by chunk;
- an app that fails before starting a response raises ``httpx.RemoteProtocolError``; one that
  ends or fails before the body's last chunk raises ``httpx.ReadError`` while it is read (a
  connection lost mid-stream); a failure after the last byte is logged;
- closing the response, or cancelling the request before its response starts, is a client
  disconnect: the app's ``receive`` answers ``http.disconnect`` (vLLM then aborts the engine
  request) and what it sends after is dropped; it answers the same once the response was read;
- the request's read timeout (the SDK's ``timeout``) bounds each wait for the app;
- closing the client ends the requests still running, after up to ``CLOSE_WAIT_S`` of clean-up.

The scope says ASGI spec 2.3, as uvicorn's does: Starlette's ``StreamingResponse`` then listens
for ``http.disconnect`` (under 2.4 it would wait for ``send`` to raise, which this never does).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import httpx2
from starlette.types import ASGIApp, Message, Scope

logger = logging.getLogger(__name__)

_ENDED = "in_process.ended"  # put on the queue when the app returns or raises
CLOSE_WAIT_S = 5.0


class InProcessTransport(httpx2.AsyncBaseTransport):
    """Serves an ``httpx.AsyncClient``'s requests from ``app`` (an ASGI 3 app), streaming;
    ``client`` is the address the app sees them come from."""

    def __init__(self, app: ASGIApp, client: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.app = app
        self.client = client
        self._tasks: set[asyncio.Task[None]] = set()  # apps still running after a disconnect

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = b"".join([part async for part in request.stream])  # type: ignore[union-attr]
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "root_path": "",
            "headers": [(key.lower(), value) for key, value in request.headers.raw],
            "server": (request.url.host, request.url.port),
            "client": self.client,
        }
        exchange = _Exchange(body, request.extensions.get("timeout", {}).get("read"))
        # A context of its own, as a request off a socket has: nothing of the caller's request
        # (BentoML's request context, tracing) leaks into this one.
        task = asyncio.create_task(exchange.run(self.app, scope), context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            start = await exchange.next_message()
        except BaseException:
            exchange.disconnect()  # our caller gave up (timeout, cancellation)
            raise
        if start["type"] != "http.response.start":
            exchange.disconnect()  # an app still running gets no reader
            raise httpx2.RemoteProtocolError(
                "the app ended without a response", request=request) from exchange.error
        return httpx2.Response(start["status"], headers=start.get("headers", []),
                               stream=_ResponseBody(exchange, request), request=request)

    async def aclose(self) -> None:
        """End the requests still running (at shutdown, with the client), waiting up to
        ``CLOSE_WAIT_S`` for them to finish their clean-up (vLLM aborting its engine request)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_WAIT_S)


class _Exchange:
    """One request's messages between the app (a task) and the client reading the response.

    The messages wait in a deque with one reader's future, not an ``asyncio.Queue``: this is
    crossed by every streamed token, and the queue's bookkeeping was a tenth of the loopback's
    cost per chunk (py-spy, ``python -m bench.layer.inprocess``)."""

    def __init__(self, body: bytes, read_timeout: float | None) -> None:
        self.body: bytes | None = body
        self.read_timeout = read_timeout
        self.messages: deque[Message] = deque()
        self.waiter: asyncio.Future[None] | None = None  # the reader's, while it waits
        self.disconnected = asyncio.Event()
        self.complete = False  # the app sent the response's last byte
        self.error: BaseException | None = None

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        try:
            await app(scope, self.receive, self.send)
        except Exception as exc:
            self.error = exc
            if self.disconnected.is_set() or self.complete:  # the reader will not see it
                logger.warning("in-process request failed after its response ended or its "
                               "client left: %r", exc)
        finally:
            self.put({"type": _ENDED})

    async def receive(self) -> Message:
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self.disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        # Never waits for the reader (a socket would, once its buffers fill): what a slow
        # reader leaves queued is bounded by the answer itself, at most max_tokens frames.
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.complete = True
        if not self.disconnected.is_set():  # a client that left reads nothing more
            self.put(message)

    def put(self, message: Message) -> None:
        self.messages.append(message)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def next_message(self) -> Message:
        while not self.messages:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                if self.read_timeout is None:
                    await self.waiter
                else:
                    async with asyncio.timeout(self.read_timeout):
                        await self.waiter
            except TimeoutError:
                raise httpx2.ReadTimeout(
                    "no answer from the app within the read timeout") from None
            finally:
                self.waiter = None
        return self.messages.popleft()

    def disconnect(self) -> None:
        self.disconnected.set()


class _ResponseBody(httpx2.AsyncByteStream):
    """The body as the app sends it; closing it early is the client's disconnect."""

    def __init__(self, exchange: _Exchange, request: httpx2.Request) -> None:
        self.exchange = exchange
        self.request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            message = await self.exchange.next_message()
            if message["type"] == _ENDED:
                raise httpx2.ReadError("the app ended before the response did",
                                       request=self.request) from self.exchange.error
            if message["type"] != "http.response.body":
                continue
            if body := message.get("body", b""):
                yield body
            if not message.get("more_body", False):
                return  # httpx then closes the response: the app hears the client is done

    async def aclose(self) -> None:
        self.exchange.disconnect()
