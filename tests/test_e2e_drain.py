"""The drain at SIGTERM, on a server of its own: requests in flight at the signal run on for the
grace period, new ones get 503, the rest is ended visibly, and the server exits 0 with nothing
left.

Every request here is held where the test needs it, whatever the machine's speed: the engine
runs one sequence at a time (``--max-num-seqs 1``), a stream the test keeps open (the blocker)
occupies it, and the requests sent after it wait in vLLM's queue until the test lets the
blocker go. The server keeps the default time limit (300 s), so nothing here ends by itself
while the test sets it up, on a loaded 2-core CPU or on an H200 alike.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import psutil
import pytest

from tests import served
from tests.conftest import MODEL
from tests.metrics import scrape, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Long enough for a SHORT answer to run once the blocker is gone, on a busy CPU (about 1 s
# here); shorter than a LONG answer takes on an H200 (SmolLM2 streams about 380 tokens/s for
# one client there, bench/results/gpu-h200.json: 8000 tokens take 21 s).
GRACE_S = 10
SHORT = 4  # tokens
LONG = 8000  # tokens
STORY = [{"role": "user", "content": "Tell me a very long story about pirates."}]

ENV = {"LLM_SHUTDOWN_GRACE_S": str(GRACE_S),
       # The blocker and two queued behind it (the default cap is 2 x max_num_seqs).
       "LLM_MAX_IN_FLIGHT": "3",
       # Room for LONG answers (SmolLM2 has an 8k context).
       "LLM_MAX_MODEL_LEN": "8192", "LLM_MAX_TOKENS": str(LONG),
       "LLM_ENGINE_ARGS": "--max-num-seqs 1"}
SERVERS = {"drain": ENV}  # started early (conftest.pytest_runtest_setup)


@pytest.fixture(scope="module")
def draining() -> Iterator[served.Served]:
    with served.serving("drain", ENV) as server:
        yield server


def chat(max_tokens: int) -> dict[str, object]:
    return {"model": MODEL, "messages": STORY, "max_tokens": max_tokens, "stream": True,
            "ignore_eos": True}


def stream_events(server: served.Served, max_tokens: int, events: list[str]) -> None:
    """One streaming chat, its ``data:`` lines appended to ``events`` as they come. A refusal
    or a broken connection is appended as a line saying so."""
    try:
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=chat(max_tokens),
                          timeout=120) as r:
            if r.status_code != 200:
                events.append(f"status {r.status_code}: {r.read().decode()}")
                return
            for line in r.iter_lines():
                if line.startswith("data:"):
                    events.append(line)
    except httpx.HTTPError as exc:
        events.append(f"broken: {exc!r}")


def finish_reasons(events: list[str]) -> list[str]:
    return [choice["finish_reason"] for e in events if e.startswith("data: {")
            for choice in json.loads(e.removeprefix("data:")).get("choices", [])
            if choice.get("finish_reason")]


def test_sigterm_drains_then_exits_cleanly(draining: served.Served) -> None:
    """Three requests in flight at the signal, each held there by the test: the blocker, and a
    short and a long request queued behind it. After the signal the test leaves the blocker:
    the short one then runs and finishes within the grace period, and the long one runs until
    the grace period ends it."""
    short: list[str] = []
    long: list[str] = []

    def queued() -> float | None:
        return scrape(draining.url, "vllm:num_requests_waiting")

    with httpx.stream("POST", f"{draining.url}/v1/chat/completions", json=chat(LONG),
                      timeout=120) as held:
        lines = held.iter_lines()
        assert next(line for line in lines if line.startswith("data:")), "no first chunk"
        threads = []
        for max_tokens, events in ((SHORT, short), (LONG, long)):
            threads.append(threading.Thread(target=stream_events,
                                            args=(draining, max_tokens, events)))
            threads[-1].start()
            # Waiting cannot pass while the blocker is held: the gauge is read, not sampled.
            wait_for(lambda: queued() == len(threads), 60,
                     f"{len(threads)} request(s) queued behind the held stream",
                     seen=lambda: (queued(), short, long))
        children = draining.descendants()
        assert any("EngineCore" in " ".join(p.cmdline()) for p in children), children
        assert httpx.get(f"{draining.url}/livez", timeout=10).status_code == 200
        draining.process.send_signal(15)
        wait_for(lambda: "Draining 3 request(s)" in draining.log.read_text(), 30,
                 "the drain of all three requests", seen=lambda: draining.log_tail(5))
        r = httpx.get(f"{draining.url}/v1/models", timeout=10)
        assert r.status_code == 503
        assert r.json()["error"]["message"] == "The server is shutting down."
        assert httpx.get(f"{draining.url}/readyz", timeout=10).status_code == 503
    # The blocker's client left: its engine request is aborted, the queued ones run.
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
    # Exit 0 and no process left, the engine's included.
    assert draining.process.wait(60) == 0
    _, left = psutil.wait_procs(children, timeout=15)
    assert not [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], left
