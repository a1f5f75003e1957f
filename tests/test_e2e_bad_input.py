"""Bad input gets a clear 4xx, in the OpenAI error shape on /v1, and the server keeps serving."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.conftest import MODEL
from tests.served import Served

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(("value", "bound"), [(1, "greater than or equal to 128"),
                                              (10**9, "less than or equal to 1024")])
def test_generate_max_tokens_out_of_range(server: Served, value: int, bound: str) -> None:
    r = httpx.post(f"{server.url}/generate", json={"max_tokens": value}, timeout=60)
    assert r.status_code == 400
    (detail,) = r.json()["detail"]
    assert detail["loc"] == ["max_tokens"] and bound in detail["msg"]


def test_invalid_input_is_logged_as_one_warning_line(server: Served) -> None:
    offset = server.log.stat().st_size
    r = httpx.post(f"{server.url}/generate", json={"max_tokens": "many"}, timeout=60)
    assert r.status_code == 400
    deadline, logged = time.monotonic() + 60, ""  # written as the request ends
    while "Client error" not in logged and time.monotonic() < deadline:
        time.sleep(0.2)
        logged = server.log.read_bytes()[offset:].decode(errors="replace")
    assert "[WARNING]" in logged and "Client error on /generate [POST]: max_tokens:" in logged
    assert "Traceback" not in logged and "Exception on" not in logged


def assert_openai_error(r: httpx.Response, status: int, param: str | None = None) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param


def test_chat_without_messages(server: Served) -> None:
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"model": MODEL}, timeout=60)
    assert_openai_error(r, 400, "body.messages")


def test_chat_with_unknown_model(server: Served) -> None:
    r = httpx.post(f"{server.url}/v1/chat/completions", timeout=60,
                   json={"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]})
    assert_openai_error(r, 404, "model")


def test_chat_with_undecodable_body(server: Served) -> None:
    r = httpx.post(f"{server.url}/v1/chat/completions", content=b"\x10\x36\x1e\r\xff\xfe",
                   timeout=60, headers={"content-type": "application/json"})
    assert_openai_error(r, 400)


def test_chat_with_non_json_body(server: Served) -> None:
    r = httpx.post(f"{server.url}/v1/chat/completions", content=b"{not json", timeout=60,
                   headers={"content-type": "application/json"})
    assert_openai_error(r, 400)


def test_generate_prompt_over_context_is_a_400(server: Served) -> None:
    r = httpx.post(f"{server.url}/generate", timeout=120,
                   json={"prompt": "pirate " * 3000, "max_tokens": 128})
    assert r.status_code == 400, r.text
    assert "2048" in r.json()["error"]


def test_server_still_answers_after_bad_input(server: Served,
                                              openai_client: openai.OpenAI) -> None:
    httpx.post(f"{server.url}/v1/chat/completions", content=b"\x00\xff", timeout=60)
    httpx.post(f"{server.url}/generate", json={"max_tokens": -5}, timeout=60)
    reply = openai_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8)
    assert reply.choices[0].message.content


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/tokenize"])
def test_json_nested_100000_deep_is_a_400_in_openai_shape(server: Served, path: str) -> None:
    body = b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = httpx.post(f"{server.url}{path}", content=body,
                   headers={"content-type": "application/json"}, timeout=60)
    assert_openai_error(r, 400)
    assert httpx.get(f"{server.url}/v1/models", timeout=30).status_code == 200
