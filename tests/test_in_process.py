"""The in-process transport of /generate's loopback, against small ASGI apps (unit tier; every
e2e /generate test goes through it to the real service)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import httpx2 as httpx  # the transport the openai SDK (3.x) is built on
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from vllm_bento.in_process import InProcessTransport

OUTER = contextvars.ContextVar("outer", default="unset")
T = TypeVar("T")


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=InProcessTransport(app), base_url="http://server:3000")


def bounded(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` with a deadline: a transport that buffers or loses a wake-up fails
    the test in seconds instead of hanging it."""
    async def run() -> T:
        async with asyncio.timeout(5):
            return await coroutine
    return asyncio.run(run())


def test_streams_each_chunk_before_the_app_sends_the_next() -> None:
    """The response is returned at its start and each chunk is read while the app waits for
    the reader: nothing is buffered to the end (httpx's own ASGITransport would hang here)."""
    read: list[bytes] = []
    turns: asyncio.Queue[None] = asyncio.Queue()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(3):
            yield f"chunk {i};".encode()
            await turns.get()  # the reader has this chunk before the next is made

    async def stream(_: Request) -> StreamingResponse:
        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def run() -> httpx.Response:
        async with client_for(Starlette(routes=[Route("/s", stream)])) as client:
            async with client.stream("GET", "/s") as response:
                async for part in response.aiter_raw():
                    read.append(part)
                    turns.put_nowait(None)
            return response

    response = bounded(run())
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert read == [b"chunk 0;", b"chunk 1;", b"chunk 2;"]


def test_request_reaches_the_app_as_sent() -> None:
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({
            "method": request.method, "path": request.url.path,
            "query": request.url.query, "header": request.headers.get("x-request-id"),
            "body": (await request.body()).decode(), "server": list(request.scope["server"]),
            "outer": OUTER.get()})

    async def run() -> dict[str, Any]:
        OUTER.set("outer request")  # the caller's context must not leak into the app's
        async with client_for(Starlette(routes=[Route("/v1/e", echo, methods=["POST"])])) as c:
            r = await c.post("/v1/e?a=1", content=b'{"x": 1}', headers={"X-Request-Id": "r1"})
            return dict(r.json())

    assert bounded(run()) == {"method": "POST", "path": "/v1/e", "query": "a=1",
                                  "header": "r1", "body": '{"x": 1}',
                                  "server": ["server", 3000], "outer": "unset"}


def test_app_failing_before_a_response_is_a_protocol_error() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("broken before start")

    async def run() -> None:
        async with client_for(app) as client:
            await client.get("/x")

    with pytest.raises(httpx.RemoteProtocolError) as info:
        bounded(run())
    assert isinstance(info.value.__cause__, RuntimeError)


def test_app_failing_mid_body_is_a_read_error_after_what_was_sent() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        raise RuntimeError("engine died")

    read: list[bytes] = []

    async def run() -> None:
        async with client_for(app) as client, client.stream("GET", "/x") as response:
            async for part in response.aiter_raw():
                read.append(part)

    with pytest.raises(httpx.ReadError):
        bounded(run())
    assert read == [b"first"]


def test_app_returning_mid_body_is_a_read_error() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})

    async def run() -> None:
        async with client_for(app) as client:
            await client.get("/x")

    with pytest.raises(httpx.ReadError):
        bounded(run())


def test_closing_the_response_early_disconnects_the_app() -> None:
    """As a client dropping its connection: Starlette's response sees ``http.disconnect`` and
    stops its body (vLLM then aborts the engine request)."""
    made: list[int] = []
    stopped = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            for i in range(10_000):
                made.append(i)
                yield b"x"
                await asyncio.sleep(0.001)
        finally:
            stopped.set()

    async def stream(_: Request) -> StreamingResponse:
        return StreamingResponse(endless())

    async def run() -> None:
        async with client_for(Starlette(routes=[Route("/s", stream)])) as client:
            async with client.stream("GET", "/s") as response:
                async for _ in response.aiter_raw():
                    if len(made) >= 3:
                        break
            await asyncio.wait_for(stopped.wait(), 5)

    bounded(run())
    assert len(made) < 100


def test_read_timeout_bounds_each_wait() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(10)

    async def run() -> None:
        async with client_for(app) as client:
            await client.get("/x", timeout=httpx.Timeout(5, read=0.05))

    with pytest.raises(httpx.ReadTimeout):
        bounded(run())


def test_read_timeout_bounds_a_stalled_body() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await asyncio.sleep(10)

    async def run() -> None:
        async with client_for(app) as client, client.stream(
                "GET", "/x", timeout=httpx.Timeout(5, read=0.05)) as response:
            async for _ in response.aiter_raw():
                pass

    with pytest.raises(httpx.ReadTimeout):
        bounded(run())


def receives_after_start(seen: list[str], start: asyncio.Event | None = None) -> Any:
    """An app that records what ``receive`` gives it after the body, the response started
    only once ``start`` is set (at once without one)."""
    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((await receive())["type"])
        if start is not None:
            await start.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"whole", "more_body": False})
        seen.append((await receive())["type"])
    return app


def test_a_caller_cancelled_before_the_response_disconnects_the_app() -> None:
    """A /generate client that leaves while vLLM still queues the request: the app is told."""
    seen: list[str] = []
    never = asyncio.Event()

    async def run() -> None:
        async with client_for(receives_after_start(seen, never)) as client:
            request = asyncio.ensure_future(client.get("/x"))
            await asyncio.sleep(0.05)
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            never.set()  # the app goes on; its next receive must say the client left
            while len(seen) < 2:
                await asyncio.sleep(0.01)

    bounded(run())
    assert seen == ["http.request", "http.disconnect"]


def test_the_app_is_told_the_exchange_ended_after_its_last_byte() -> None:
    seen: list[str] = []

    async def run() -> bytes:
        async with client_for(receives_after_start(seen)) as client:
            body = (await client.get("/x")).content
            while len(seen) < 2:
                await asyncio.sleep(0.01)
            return body

    assert bounded(run()) == b"whole"
    assert seen == ["http.request", "http.disconnect"]


def test_an_app_sending_no_response_start_is_told_the_client_left() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.body", "body": b"no start", "more_body": True})
        seen.append((await receive())["type"])

    async def run() -> None:
        async with client_for(app) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get("/x")
            while not seen:
                await asyncio.sleep(0.01)

    bounded(run())
    assert seen == ["http.disconnect"]


def test_a_failure_after_the_last_byte_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """The reader already has the whole answer, so only the log can tell (as uvicorn's does)."""
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok", "more_body": False})
        raise RuntimeError("clean-up failed")

    async def run() -> bytes:
        async with client_for(app) as client:
            body = (await client.get("/x")).content
            await asyncio.sleep(0.05)
            return body

    with caplog.at_level(logging.WARNING, logger="vllm_bento.in_process"):
        assert bounded(run()) == b"ok"
    assert "clean-up failed" in caplog.text


def test_closing_the_client_ends_running_requests_and_waits_for_their_clean_up() -> None:
    cleaned: list[str] = []
    started = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            started.set()
            await asyncio.sleep(10)
        finally:
            await asyncio.sleep(0.05)  # e.g. vLLM aborting its engine request
            cleaned.append("done")

    async def run() -> None:
        client = client_for(app)
        request = asyncio.ensure_future(client.get("/x"))
        await started.wait()
        await client.aclose()
        assert cleaned == ["done"]
        request.cancel()

    bounded(run())
