"""The corrections to BentoML's error bodies and schema, and vLLM's framework errors."""

from __future__ import annotations

import asyncio
import json

from fastapi.testclient import TestClient
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from vllm_bento.bentoml_compat import JsonOnlyApis, UnwrapErrorList, fix_error_detail_schema


def run(app: object) -> tuple[int, bytes]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/generate", "headers": []}
    asyncio.run(UnwrapErrorList(app)(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def responding(status: int, content: object) -> object:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse(content, status_code=status)(scope, receive, send)
    return app


def test_bentomls_one_element_error_list_becomes_an_object() -> None:
    status, body = run(responding(400, [{"error": "prompt too long"}]))
    assert status == 400 and json.loads(body) == {"error": "prompt too long"}


def test_other_bodies_pass_untouched() -> None:
    assert run(responding(400, {"error": "x", "detail": []})) == (
        400, b'{"error":"x","detail":[]}')
    assert run(responding(200, [{"error": "model text"}])) == (200, b'[{"error":"model text"}]')


def test_error_detail_schema_allows_the_list_bentoml_sends() -> None:
    from bentoml._internal.service.openapi.utils import exception_components_schema

    fix_error_detail_schema()
    detail = exception_components_schema()["InvalidArgument"].properties["detail"]
    assert detail.type is None and detail.oneOf is not None


def test_generate_refuses_non_json_bodies_with_415() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Route

    async def ok(request: object) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = JsonOnlyApis(Starlette(routes=[Route("/generate", ok, methods=["POST"])]),
                       paths=("/generate",))
    client = TestClient(app)
    assert client.post("/generate", headers={"content-type": "multipart/form-data"}).status_code \
        == 415
    assert client.post("/generate", json={}).status_code == 200
    assert client.post("/generate", content=b"{}").status_code == 200
