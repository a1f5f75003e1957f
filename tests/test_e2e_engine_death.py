"""Killing vLLM's engine-core process under a served instance: readiness drops, requests in
flight end with an error instead of hanging, new ones get 503, the server exits non-zero, and
no process is left behind."""

from __future__ import annotations

import threading
import time

import httpx
import psutil
import pytest

from tests import served
from tests.conftest import MODEL

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def engine_core(server: served.Served) -> psutil.Process:
    for p in server.descendants():
        if "EngineCore" in p.name() or "EngineCore" in " ".join(p.cmdline()):
            return p
    raise AssertionError("no EngineCore process under the server")


def test_engine_death_fails_fast_and_exits_non_zero() -> None:
    server = served.start("engine-death")
    try:
        served.wait_ready(server)
        outcome: dict[str, object] = {}

        def in_flight() -> None:
            body = {"model": MODEL, "stream": True, "max_tokens": 1500, "ignore_eos": True,
                    "messages": [{"role": "user", "content": "Tell a very long story."}]}
            start = time.monotonic()
            try:
                with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body,
                                  timeout=120) as r:
                    outcome["events"] = [x for x in r.iter_lines() if x.startswith("data:")]
            except httpx.HTTPError as exc:
                outcome["events"] = [f"broken: {exc!r}"]
            outcome["seconds"] = time.monotonic() - start

        thread = threading.Thread(target=in_flight)
        thread.start()
        time.sleep(3)  # the stream is under way
        children = server.descendants()
        engine_core(server).kill()
        killed = time.monotonic()

        first_503 = None
        while time.monotonic() - killed < 15:
            try:
                r = httpx.get(f"{server.url}/readyz", timeout=2)
                not_ready = r.status_code != 200
                if not_ready and first_503 is None:
                    first_503 = httpx.get(f"{server.url}/v1/models", timeout=2).status_code
            except httpx.HTTPError:
                not_ready = True  # already exited: not ready either
            if not_ready:
                break
            time.sleep(0.1)
        to_not_ready = time.monotonic() - killed
        thread.join(timeout=30)
        code = server.process.wait(timeout=30)
        print(f"\nengine killed -> /readyz not ready in {to_not_ready:.2f} s; in-flight stream "
              f"ended after {outcome.get('seconds')} s; exit code {code}")
    finally:
        served.stop(server)

    assert to_not_ready < 5
    assert first_503 in (503, None), first_503  # None: the server had already exited
    events = outcome["events"]
    assert isinstance(events, list) and events
    assert not any('"finish_reason":"length"' in e for e in events)  # no normal finish
    assert code != 0
    _, left = psutil.wait_procs(children, timeout=15)  # helpers such as resource_tracker
    left = [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [(p.pid, p.name(), p.cmdline()[:3]) for p in left]
