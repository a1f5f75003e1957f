"""A server with API keys, a small in-flight cap and a short time limit: authentication,
overload, time limits, client disconnects, and (last, as it stops the server) graceful shutdown.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import bentoml
import httpx
import openai
import pytest

from tests import served
from tests.conftest import MODEL
from tests.metrics import (
    generated_tokens,
    seconds_until_generation_stops,
    tree_rss_mib,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KEY = "test-key-1"
CAP = 2
TIME_LIMIT_S = 20  # above the slowest normal request here (128 tokens on a busy machine)
GRACE_S = 6
LONG_STORY = [{"role": "user", "content": "Tell me a very long story about pirates."}]
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def guarded() -> Iterator[served.Served]:
    env = {"LLM_API_KEYS": f"other-key,{KEY}", "LLM_MAX_IN_FLIGHT": str(CAP),
           "LLM_REQUEST_TIMEOUT_S": str(TIME_LIMIT_S), "LLM_SHUTDOWN_GRACE_S": str(GRACE_S)}
    server = served.start("guarded", env)
    try:
        served.wait_ready(server)
        yield server
    finally:
        served.stop(server)


def client(server: served.Served, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)


# -- API keys -------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": f"Basic {KEY}"}])
def test_model_routes_need_a_valid_key(guarded: served.Served, headers: dict[str, str]) -> None:
    for method, path, body in [("GET", "/v1/models", None),
                               ("POST", "/v1/chat/completions", {"model": MODEL}),
                               ("POST", "/generate", {"max_tokens": 128}),
                               # vLLM's runtime LoRA routes (LLM_ALLOW_RUNTIME_LORA) would
                               # load files from the server's disk: refused before routing.
                               ("POST", "/v1/load_lora_adapter",
                                {"lora_name": "x", "lora_path": "/tmp"}),
                               ("POST", "/v1/unload_lora_adapter", {"lora_name": "x"})]:
        r = httpx.request(method, f"{guarded.url}{path}", json=body, headers=headers, timeout=30)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["type"] == "authentication_error"


def test_health_and_metrics_stay_open(guarded: served.Served) -> None:
    for path in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(f"{guarded.url}{path}", timeout=30).status_code == 200


def test_openai_sdk_with_api_key(guarded: served.Served) -> None:
    reply = client(guarded).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8)
    assert reply.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        client(guarded, key="wrong").models.list()


def test_bentoml_client_with_token(guarded: served.Served) -> None:
    with bentoml.SyncHTTPClient(guarded.url, token=KEY, timeout=120) as c:
        # A short answer: what is tested is the key, not whether 128 tokens fit in the time
        # limit on a busy machine (seen: 8 tok/s, the default prompt ran past 20 s).
        assert "".join(c.generate(prompt="Say hi.", max_tokens=128)).strip()


# -- overload ---------------------------------------------------------------------------------

def stream_once(server: served.Served) -> str:
    """One streaming chat; returns its finish_reason, or 'refused' for a 429."""
    try:
        stream = client(server).chat.completions.create(
            model=MODEL, messages=LONG_STORY, max_tokens=24, stream=True)
        finish = None
        for chunk in stream:
            if chunk.choices:
                finish = chunk.choices[0].finish_reason or finish
        assert finish in ("stop", "length"), f"stream ended without finish_reason: {finish}"
        return finish
    except openai.RateLimitError as exc:
        body = exc.response.json()
        assert body["error"]["type"] == "rate_limit_exceeded"
        assert exc.response.headers["retry-after"] == "1"
        return "refused"


def test_overload_is_refused_with_429_and_admitted_requests_complete(
        guarded: served.Served) -> None:
    clients, duration_s = 4 * CAP, 20.0
    rss_before = tree_rss_mib(guarded.process.pid)
    deadline = time.monotonic() + duration_s
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        while time.monotonic() < deadline:
            outcome = stream_once(guarded)  # raises on a 5xx or a broken stream
            with lock:
                outcomes.append(outcome)
            if outcome == "refused":
                time.sleep(0.2)

    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(worker) for _ in range(clients)]:
            future.result()
    rss_after = tree_rss_mib(guarded.process.pid)
    admitted = len([o for o in outcomes if o != "refused"])
    refused = len(outcomes) - admitted
    print(f"\nload: {clients} clients, {duration_s:.0f} s, {len(outcomes)} requests, "
          f"{admitted} completed, {refused} refused (429), 0 failed; "
          f"server RSS {rss_before:.0f} -> {rss_after:.0f} MiB")
    assert admitted > 0 and refused > 0
    assert rss_after - rss_before < 512, "server memory grew under load"
    assert stream_once(guarded) != "refused", "slots were not given back after the load"


# -- time limit and disconnects -------------------------------------------------------------------

def test_stream_over_time_limit_ends_with_error_frame(guarded: served.Served) -> None:
    body = {"model": MODEL, "messages": LONG_STORY, "max_tokens": 1500, "stream": True,
            "ignore_eos": True}
    start = time.monotonic()
    with httpx.stream("POST", f"{guarded.url}/v1/chat/completions", json=body, headers=AUTH,
                      timeout=120) as r:
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert TIME_LIMIT_S - 1 < time.monotonic() - start < TIME_LIMIT_S + 10
    assert events[-1] == "data: [DONE]"
    assert '"type": "timeout"' in events[-2] and "time limit" in events[-2]
    assert seconds_until_generation_stops(guarded.url) < 1.5  # aborted in the engine too


def test_generate_over_time_limit_is_cut_off(guarded: served.Served) -> None:
    """A started plain-text stream cannot change its status: it ends without its final chunk,
    which the user's client reports as an error; the engine request is aborted."""
    start = time.monotonic()
    received: list[str] = []
    with bentoml.SyncHTTPClient(guarded.url, token=KEY, timeout=120) as c:
        with pytest.raises(httpx.RemoteProtocolError):  # a greedy story runs past 20 s here
            received.extend(c.generate(prompt=LONG_STORY[0]["content"], max_tokens=1024))
    assert received, "cut off before its first chunk"  # a 504 would have come before any text
    assert TIME_LIMIT_S - 1 < time.monotonic() - start < TIME_LIMIT_S + 10
    assert seconds_until_generation_stops(guarded.url) < 1.5
    log = guarded.log.read_text()
    assert "path=/generate status=504" in log
    assert log.count("Stream cut off without its final chunk") == 1  # one line, no traceback
    assert "Exception in ASGI application" not in log


@pytest.mark.parametrize("route", ["chat", "generate"])
def test_disconnect_aborts_the_engine_request(guarded: served.Served, route: str) -> None:
    if route == "chat":
        request = {"url": f"{guarded.url}/v1/chat/completions", "json": {
            "model": MODEL, "messages": LONG_STORY, "max_tokens": 1000, "stream": True}}
    else:
        request = {"url": f"{guarded.url}/generate", "json": {"max_tokens": 1000}}
    with httpx.stream("POST", headers=AUTH, timeout=60, **request) as r:
        chunks = r.iter_bytes()
        assert next(chunks, None), "no first chunk"
        before = generated_tokens(guarded.url)
        # Leave only once the counter has moved for this answer: the engine is generating it.
        deadline = time.monotonic() + 30
        while generated_tokens(guarded.url) <= before:
            assert time.monotonic() < deadline, "the engine generated nothing for 30 s"
            assert next(chunks, None), "the answer ended before the test could leave it"
    # leaving the block closed the connection mid-stream
    waited = seconds_until_generation_stops(guarded.url)
    print(f"\n{route}: the engine stopped generating {waited:.2f} s after the client left")
    assert waited < 1.5


# -- graceful shutdown (stops the server: keep last) ------------------------------------------

def stream_events(server: served.Served, max_tokens: int, started: threading.Event,
                  events: list[str]) -> None:
    """One streaming chat of the long story, its ``data:`` lines appended to ``events`` as they
    come; ``started`` is set at the first (the request was admitted and the engine runs it).
    A refusal or a broken connection is appended as a line saying so."""
    body = {"model": MODEL, "messages": LONG_STORY, "max_tokens": max_tokens, "stream": True,
            "ignore_eos": True}
    try:
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", headers=AUTH, json=body,
                          timeout=120) as r:
            if r.status_code != 200:
                events.append(f"status {r.status_code}: {r.read().decode()}")
                return
            for line in r.iter_lines():
                if line.startswith("data:"):
                    events.append(line)
                    started.set()
    except httpx.HTTPError as exc:
        events.append(f"broken: {exc!r}")
    finally:
        started.set()  # also when it failed: the test must not wait on it


def finish_reasons(events: list[str]) -> list[str]:
    return [choice["finish_reason"] for e in events if e.startswith("data: {")
            for choice in json.loads(e.removeprefix("data:")).get("choices", [])
            if choice.get("finish_reason")]


def test_sigterm_drains_then_exits_cleanly(guarded: served.Served) -> None:
    # Both requests are in flight when the signal comes: each has streamed its first chunk,
    # which is what its client sees (vLLM's running gauge is sampled, and a busy machine
    # missed it). The long one (outlives the grace period) starts first, so the short one
    # (finishes well within it, even at 5 tok/s) has 15 tokens to go at the signal.
    short: list[str] = []
    long: list[str] = []
    threads: list[threading.Thread] = []
    for max_tokens, events in ((1500, long), (16, short)):
        started = threading.Event()
        threads.append(threading.Thread(target=stream_events,
                                        args=(guarded, max_tokens, started, events)))
        threads[-1].start()
        assert started.wait(60), f"no first chunk in 60 s for max_tokens={max_tokens}"
        assert events and events[0].startswith("data: {"), events
    children = guarded.descendants()
    guarded.process.send_signal(15)
    time.sleep(1)
    r = httpx.get(f"{guarded.url}/v1/models", headers=AUTH, timeout=10)
    assert r.status_code == 503 and r.json()["error"]["message"] == "The server is shutting down."
    assert httpx.get(f"{guarded.url}/readyz", timeout=10).status_code == 503
    for t in threads:
        t.join(timeout=GRACE_S + 60)
    # The short one finished normally.
    assert finish_reasons(short) == ["length"] and short[-1] == "data: [DONE]", short[-3:]
    # The long one was ended at the end of the grace period, visibly: an error event, no
    # normal finish.
    assert not finish_reasons(long), long[-3:]
    assert long[-1] == "data: [DONE]", long[-3:]
    error = json.loads(long[-2].removeprefix("data:"))["error"]
    assert (error["code"], error["type"], error["message"]) == (
        503, "service_unavailable", "The server is shutting down.")
    assert "Draining 2 request(s)" in guarded.log.read_text()
    assert guarded.process.wait(60) == 0
    time.sleep(1)
    assert not [p for p in children if p.is_running() and p.status() != "zombie"]
