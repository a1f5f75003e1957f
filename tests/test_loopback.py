"""/generate's loopback client against a fake /v1 (unit tier; the e2e tests use the real one)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2 as httpx  # the transport the openai SDK (3.x) is built on
import pytest
from bentoml.exceptions import BentoMLException, ServiceUnavailable

from vllm_bento.errors import StreamCutOff
from vllm_bento.loopback import LoopbackChat, sse_data


def sse(*events: dict[str, object] | str) -> bytes:
    return b"".join(
        f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events)


def chunk(text: str, finish: str | None = None) -> dict[str, object]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}


Handler = Callable[[httpx.Request], httpx.Response]


def collect(handler: Handler) -> tuple[list[str], list[dict[str, Any]]]:
    """Run the loopback stream against ``handler``; return the texts and the requests seen."""
    seen: list[dict[str, Any]] = []

    def recording(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return handler(request)

    chat = LoopbackChat("m", temperature=0.0, loopback_token="t",
                        http_client=httpx.AsyncClient(transport=httpx.MockTransport(recording)))

    async def run() -> list[str]:
        return [t async for t in chat.stream("hi", 128)]

    return asyncio.run(run()), seen


def test_streams_text_with_explicit_sampling() -> None:
    body = sse(chunk(""), chunk("Ahoy"), chunk(" matey", "length"), "[DONE]")
    texts, seen = collect(lambda _: httpx.Response(200, content=body,
                                                   headers={"content-type": "text/event-stream"}))
    assert texts == ["Ahoy", " matey"]
    assert seen[0]["max_tokens"] == 128 and seen[0]["temperature"] == 0.0
    assert seen[0]["stream"] is True and seen[0]["messages"][0]["content"] == "hi"
    assert seen[0]["stream_options"] == {"include_usage": True}


def test_client_error_before_first_chunk_keeps_its_status() -> None:
    error = {"error": {"message": "prompt too long", "type": "BadRequestError", "param": None,
                       "code": 400}}
    with pytest.raises(BentoMLException, match="prompt too long") as info:
        collect(lambda _: httpx.Response(400, json=error))
    assert info.value.error_code == 400


def test_engine_failure_before_first_chunk_is_503() -> None:
    with pytest.raises(ServiceUnavailable):
        collect(lambda _: httpx.Response(500, json={"error": {"message": "boom"}}))


def test_unreachable_engine_is_503() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(ServiceUnavailable):
        collect(refuse)


def test_error_after_first_chunk_interrupts_the_stream() -> None:
    body = sse(chunk("Ahoy"), {"error": {"message": "engine died", "type": "x", "code": 500}})
    with pytest.raises(StreamCutOff):
        collect(lambda _: httpx.Response(200, content=body,
                                         headers={"content-type": "text/event-stream"}))


def test_aborted_generation_is_not_a_complete_answer() -> None:
    body = sse(chunk("Ahoy"), chunk("", "abort"), "[DONE]")
    with pytest.raises(StreamCutOff):
        collect(lambda _: httpx.Response(200, content=body,
                                         headers={"content-type": "text/event-stream"}))


def test_needs_an_app_to_loop_back_to() -> None:
    with pytest.raises(ValueError, match="app to loop back to"):
        LoopbackChat("m", temperature=0.0, loopback_token="t")


def test_error_frame_before_the_first_chunk_is_503() -> None:
    body = sse({"error": {"message": "engine died", "type": "x", "code": 500}})
    with pytest.raises(ServiceUnavailable):
        collect(lambda _: httpx.Response(200, content=body,
                                         headers={"content-type": "text/event-stream"}))


def test_usage_only_chunk_and_frames_without_content_are_skipped() -> None:
    usage = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
             "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    body = (b": keep-alive comment\n\n" + sse(chunk("Ahoy"), chunk(" matey", "stop"), usage)
            + sse("[DONE]"))
    texts, _ = collect(lambda _: httpx.Response(200, content=body,
                                                headers={"content-type": "text/event-stream"}))
    assert texts == ["Ahoy", " matey"]


def test_the_inner_call_carries_the_outer_request_id() -> None:
    ids: list[str | None] = []
    body = sse(chunk("Ahoy", "stop"), "[DONE]")

    def record(request: httpx.Request) -> httpx.Response:
        ids.append(request.headers.get("x-request-id"))
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    chat = LoopbackChat("m", temperature=0.0, loopback_token="t",
                        http_client=httpx.AsyncClient(transport=httpx.MockTransport(record)))

    async def run(request_id: str | None) -> list[str]:
        return [t async for t in chat.stream("hi", 128, request_id=request_id)]

    assert asyncio.run(run("outer-1")) == ["Ahoy"]
    asyncio.run(run(None))
    assert ids == ["outer-1", None]


def test_sse_frames_split_anywhere_across_chunks_are_read_whole() -> None:
    body = (sse(chunk("Ahoy"), chunk(" matey", "stop")).replace(b"\n", b"\r\n")
            + sse("[DONE]") + sse(chunk("after the end")))

    async def read(size: int) -> list[dict[str, Any]]:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(body), size):
                yield body[i:i + size]
        return [data async for data in sse_data(chunks())]

    for size in (1, 2, 7, 64, len(body)):
        frames = asyncio.run(read(size))
        assert [f["choices"][0]["delta"]["content"] for f in frames] == ["Ahoy", " matey"], size
