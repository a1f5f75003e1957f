"""Fair to every client, on a server of its own with a small engine batch (``--max-num-seqs 8``,
so a cap of 16 sequences in flight): an idle socket holds no slot, a slow body gets 408, a big
body 413, ``n`` is bounded, and one request cannot take the whole batch while others wait.

Every state here is one the test holds or the server's own deadline sets, not a machine's speed:
an idle client is known to be inside the gate when the server has answered its
``Expect: 100-continue`` (uvicorn does so at the gate's first read of the body); a big request is
known to be running while the test has not finished reading its stream and vLLM's count of
finished requests has not moved.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests import served
from tests.conftest import MODEL
from tests.metrics import finished_requests
from vllm_bento.admission import default_max_in_flight

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MAX_NUM_SEQS = 8  # one request may run at most half: 4
CAP = default_max_in_flight(MAX_NUM_SEQS)  # sequences in flight: 16
BODY_TIMEOUT_S = 5
MAX_BODY_MIB = 1
LONG = 8000  # tokens: 20 s or more on an H200 (~380 tokens/s for one stream), minutes here
ENV = {"LLM_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
       "LLM_MAX_BODY_MIB": str(MAX_BODY_MIB), "LLM_ENGINE_ARGS": f"--max-num-seqs {MAX_NUM_SEQS}",
       "LLM_MAX_MODEL_LEN": "8192", "LLM_MAX_TOKENS": str(LONG),
       # Not fairness: the README's way to keep Responses API conversations, tested on this
       # server rather than starting one more.
       "VLLM_ENABLE_RESPONSES_API_STORE": "1"}
SERVERS = {"fair": ENV}  # started early (conftest.pytest_runtest_setup)
HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def fair() -> Iterator[served.Served]:
    with served.serving("fair", ENV) as server:
        yield server


def client(server: served.Served, timeout: float = 120) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0,
                         timeout=timeout)


def idle_client(server: served.Served) -> socket.socket:
    """A client that sent its headers and one byte of a 100-byte body, and sends no more; it
    returns once the gate is reading that body (the server answered ``100 Continue``)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 100\r\n"
                 b"Expect: 100-continue\r\n\r\n")
    answer = sock.recv(1024)
    assert answer.startswith(b"HTTP/1.1 100 Continue"), answer
    sock.sendall(b"{")
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, object]]:
    """Status and JSON body of the one response on ``sock`` (the server closes or the body
    ends at its Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, body
        body += chunk
    return int(head.split()[1]), json.loads(body[:length])


def test_idle_clients_hold_no_slot_and_get_408(fair: served.Served) -> None:
    """More idle clients than the cap, each known to be inside the gate: a real request is
    still answered, and each idle one gets 408 when its body deadline passes."""
    idle = [idle_client(fair) for _ in range(CAP + 1)]
    try:
        answer = client(fair).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
        assert answer.choices[0].finish_reason in {"stop", "length"}
        for sock in idle:
            status, body = read_response(sock)
            assert status == 408, body
            error = body["error"]
            assert isinstance(error, dict) and error["type"] == "invalid_request_error"
            assert f"within {BODY_TIMEOUT_S} s" in error["message"]
    finally:
        for sock in idle:
            sock.close()


def test_a_body_over_the_limit_is_413_in_the_openai_shape(fair: served.Served) -> None:
    big = "x" * (MAX_BODY_MIB * 2**20)
    with pytest.raises(openai.APIStatusError) as refused:
        client(fair).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": big}], max_tokens=1)
    assert refused.value.status_code == 413
    assert f"{MAX_BODY_MIB * 2**20} bytes" in refused.value.message
    # Sent in chunks with no Content-Length: refused as it arrives.
    r = httpx.post(f"{fair.url}/v1/completions", timeout=60,
                   content=(b"x" * 65536 for _ in range(MAX_BODY_MIB * 16 + 1)))
    assert r.status_code == 413 and r.json()["error"]["code"] == 413


def test_n_past_openais_bound_is_400_naming_n(fair: served.Served) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client(fair).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1, n=129)
    assert refused.value.param == "n" and "at most 128 choices" in refused.value.message


def test_one_request_cannot_take_the_whole_batch(fair: served.Served) -> None:
    """``n`` = the whole batch is refused; ``n`` = half of it runs, and a small request from
    another client is answered while it runs (vLLM's count of finished requests moves by the
    small one alone)."""
    openai_client = client(fair)
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1,
                                              n=MAX_NUM_SEQS)
    assert refused.value.param == "n"
    assert f"at most {MAX_NUM_SEQS // 2} at once" in refused.value.message
    # n as vLLM also reads it: a string, a whole float, an escaped key.
    for body in ('{"n": "8"', '{"n": 8.0', '{"\\u006e": 8'):
        r = httpx.post(f"{fair.url}/v1/chat/completions", timeout=60,
                       content=body + f', "model": "{MODEL}", "max_tokens": 1, '
                       '"messages": [{"role": "user", "content": "Hi"}]}',
                       headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "n", (body, r.text)

    finished = finished_requests(fair.url)
    with openai_client.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=LONG, n=MAX_NUM_SEQS // 2, stream=True,
            extra_body={"ignore_eos": True}) as big:
        next(iter(big))  # running
        small = client(fair).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
        assert small.choices[0].finish_reason in {"stop", "length"}
        assert finished_requests(fair.url) == finished + 1, "the big request finished first"


def test_the_start_log_says_every_model_route_is_open(fair: served.Served) -> None:
    assert "API keys: none (LLM_API_KEYS is unset)" in fair.log.read_text(errors="replace")


def test_responses_conversations_work_with_vllms_store(fair: served.Served) -> None:
    """What the README says: with VLLM_ENABLE_RESPONSES_API_STORE=1, a stored response can be
    retrieved and continued by ``previous_response_id``."""
    openai_client = client(fair)
    first = openai_client.responses.create(model=MODEL, input="My name is Ann.",
                                           max_output_tokens=8, store=True)
    assert openai_client.responses.retrieve(first.id).id == first.id
    after = openai_client.responses.create(model=MODEL, input="What is my name?",
                                           previous_response_id=first.id, max_output_tokens=8)
    # Without the store, retrieve is a 404 (tests/test_e2e_openai_surface.py).
    assert after.status in {"completed", "incomplete"} and after.output_text  # 8 tokens
