"""The /v1 forwarder: before the engine, undecodable bodies, and the body handed on intact."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient
from starlette.types import Message

from tests.fakes import FakeRuntime
from vllm_bento.openai_mount import UNROUTED, OpenAIMount, RouteLabels, anthropic_errors


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"path": request.url.path, "body": (await request.body()).decode()})


def client(forwarder: OpenAIMount) -> TestClient:
    return TestClient(Starlette(routes=[Mount("/v1", forwarder)]))


def test_503_in_openai_shape_before_the_engine_is_up() -> None:
    r = client(OpenAIMount(FakeRuntime())).get("/v1/models")
    assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable"


def test_body_and_full_path_reach_vllms_app() -> None:
    vllm_app = Starlette(routes=[Route("/v1/chat/completions", echo, methods=["POST"])])
    forwarder = OpenAIMount(FakeRuntime(vllm_app))
    r = client(forwarder).post("/v1/chat/completions", content=b'{"a": "\xc3\xa9"}')
    assert r.json() == {"path": "/v1/chat/completions", "body": '{"a": "é"}'}


def test_undecodable_body_is_a_400_in_openai_shape() -> None:
    vllm_app = Starlette(routes=[Route("/v1/completions", echo, methods=["POST"])])
    forwarder = OpenAIMount(FakeRuntime(vllm_app))
    r = client(forwarder).post("/v1/completions", content=b"\x10\x36\x1e\r\xff\xfe")
    assert r.status_code == 400
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_json_nested_too_deeply_is_a_400_in_openai_shape() -> None:
    vllm_app = Starlette(routes=[Route("/v1/chat/completions", echo, methods=["POST"])])
    body = b"[" * 100_000 + b"]" * 100_000
    r = client(OpenAIMount(FakeRuntime(vllm_app))).post("/v1/chat/completions", content=body)
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"]
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_bodies_with_many_brackets_but_shallow_reach_vllm() -> None:
    vllm_app = Starlette(routes=[Route("/v1/chat/completions", echo, methods=["POST"])])
    body = ("[" + ",".join(["{}"] * 2000) + "]").encode()
    r = client(OpenAIMount(FakeRuntime(vllm_app))).post("/v1/chat/completions", content=body)
    assert r.status_code == 200 and r.json()["body"] == body.decode()



def test_route_labels_keep_routes_and_bound_the_rest() -> None:
    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({})

    labels = RouteLabels(Starlette(routes=[
        Route("/v1/chat/completions", ok), Route("/v1/models/{model:path}", ok)]))
    assert labels.label("/v1/chat/completions") == "/v1/chat/completions"
    assert labels.label("/v1/models/org/name") == "/v1/models/{model:path}"
    assert labels.label("/v1/made-up") == labels.label("/elsewhere") == UNROUTED



@pytest.mark.parametrize(("status", "expected"), [(404, "not_found_error"),
                                                  (400, "invalid_request_error"),
                                                  (500, "api_error")])
@pytest.mark.parametrize("vllms", [
    {"type": "error", "error": {"type": "NotFoundError", "message": "m"}},  # its exception name
    {"error": {"message": "m", "type": "Bad Request", "param": None, "code": 400}},  # OpenAI's
])
def test_anthropic_errors_get_anthropics_shape_and_types(status: int, expected: str,
                                                         vllms: dict[str, object]) -> None:
    """vLLM's own Anthropic errors name its exception as their type; its validation errors,
    Starlette's 404/405 and the forwarder's 400s come in the OpenAI shape."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def vllm_answers() -> None:
        sending = anthropic_errors(send)
        body = json.dumps(vllms).encode()
        await sending({"type": "http.response.start", "status": status,
                       "headers": [(b"content-length", str(len(body)).encode())]})
        await sending({"type": "http.response.body", "body": body[:10], "more_body": True})
        await sending({"type": "http.response.body", "body": body[10:], "more_body": False})

    asyncio.run(vllm_answers())
    start, body = sent
    assert json.loads(body["body"]) == {"type": "error", "error": {"type": expected,
                                                                  "message": "m"}}
    assert dict(start["headers"])[b"content-length"] == str(len(body["body"])).encode()


def test_anthropic_answers_that_are_not_errors_pass_as_they_are() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def streaming() -> None:
        sending = anthropic_errors(send)
        for message in ({"type": "http.response.start", "status": 200, "headers": []},
                        {"type": "http.response.body", "body": b"event: x", "more_body": True},
                        {"type": "http.response.body", "body": b"", "more_body": False}):
            await sending(message)

    asyncio.run(streaming())
    assert [m.get("body") for m in sent] == [None, b"event: x", b""]
