"""Killing vLLM's engine-core process under a served instance: readiness drops, requests in
flight end with an error instead of hanging, new ones get 503, the server exits non-zero, and
no process is left behind."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
import pytest

from tests import served
from tests.conftest import MODEL
from tests.metrics import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SERVERS: dict[str, dict[str, str]] = {"engine-death": {}}  # started early (conftest)

# The default server's max_model_len is 2048: 1900 tokens with ignore_eos leave room for the
# prompt and take seconds even on a fast GPU, so the stream is still running at the kill,
# which comes right after its first chunk.
STREAM_TOKENS = 1900
FIRST_CHUNK_TIMEOUT_S = 120.0  # one short prompt's prefill on a loaded CPU, with room to spare
NOT_READY_BOUND_S = 5.0  # the watchdog polls the engine every 0.2 s: the contract is "a second"
STREAM_END_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 30.0  # the worker exits a second after the engine's death (DEATH_EXIT_DELAY_S)


@dataclass
class Stream:
    """What the request in flight received, recorded by its thread as it came."""

    status: int | None = None
    chunks: list[dict[str, Any]] = field(default_factory=list)  # the JSON `data:` events
    done: bool = False  # `data: [DONE]` came
    error: str | None = None  # how the connection broke, if it did
    started: threading.Event = field(default_factory=threading.Event)  # a first real chunk
    ended: threading.Event = field(default_factory=threading.Event)
    chunks_at_kill: int = 0

    def seen(self) -> str:
        return (f"status {self.status}, {len(self.chunks)} chunk(s) ({self.chunks_at_kill} "
                f"before the kill; last: {self.chunks[-1] if self.chunks else None}), "
                f"done={self.done}, error={self.error}")

    def finish_reasons(self) -> list[object]:
        return [choice.get("finish_reason") for chunk in self.chunks
                for choice in chunk.get("choices") or []]


def stream_story(url: str, stream: Stream) -> None:
    body = {"model": MODEL, "stream": True, "max_tokens": STREAM_TOKENS, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Tell a very long story."}]}
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as r:
            stream.status = r.status_code
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line.removeprefix("data:").strip()
                if data == "[DONE]":
                    stream.done = True
                    continue
                chunk = json.loads(data)
                stream.chunks.append(chunk)
                if chunk.get("choices"):  # a real chunk: the engine is running the request
                    stream.started.set()
    except (httpx.HTTPError, ValueError) as exc:  # ValueError: an event that is not JSON
        stream.error = repr(exc)
    finally:
        stream.ended.set()


def engine_core(server: served.Served) -> psutil.Process:
    for p in server.descendants():
        if "EngineCore" in p.name() or "EngineCore" in " ".join(p.cmdline()):
            return p
    raise AssertionError("no EngineCore process under the server")


def test_engine_death_fails_fast_and_exits_non_zero() -> None:
    server = served.start("engine-death")
    try:
        served.wait_ready(server)
        stream = Stream()
        threading.Thread(target=stream_story, args=(server.url, stream), daemon=True).start()
        wait_for(lambda: stream.started.is_set() or stream.ended.is_set(),
                 FIRST_CHUNK_TIMEOUT_S, "first chunk of the stream to kill", seen=stream.seen)
        assert stream.started.is_set(), f"the stream ended before its first chunk: {stream.seen()}"
        children = server.descendants()
        stream.chunks_at_kill = len(stream.chunks)
        engine_core(server).kill()
        killed = time.monotonic()

        # /readyz, polled until it is not 200; every answer is kept for the failure message.
        answers: list[str] = []
        to_not_ready: float | None = None
        first_503 = None
        while to_not_ready is None and time.monotonic() - killed < 3 * NOT_READY_BOUND_S:
            try:
                answer: int | str = httpx.get(f"{server.url}/readyz", timeout=2).status_code
            except httpx.HTTPError as exc:
                answer = repr(exc)  # already exited: not ready either
            answers.append(f"{time.monotonic() - killed:.2f} s: {answer}")
            if answer == 200:
                time.sleep(0.1)
                continue
            to_not_ready = time.monotonic() - killed
            if isinstance(answer, int):  # new requests, now: 503 (None: it has exited since)
                with contextlib.suppress(httpx.HTTPError):
                    first_503 = httpx.get(f"{server.url}/v1/models", timeout=2).status_code
        stream.ended.wait(STREAM_END_TIMEOUT_S)
        try:
            code: int | None = server.process.wait(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = None
        print(f"\nengine killed -> /readyz answers {answers}; in-flight stream: "
              f"{stream.seen()}; exit code {code}")
    finally:
        served.stop(server)

    assert to_not_ready is not None and to_not_ready < NOT_READY_BOUND_S, (
        f"/readyz after the kill: {answers}")
    assert first_503 in (503, None), first_503  # None: the server had already exited
    assert stream.ended.is_set(), (
        f"the stream in flight still hangs {STREAM_END_TIMEOUT_S:.0f} s after the kill: "
        f"{stream.seen()}")
    assert stream.status == 200 and stream.chunks_at_kill, stream.seen()  # it was under way
    # It ended with an error, not as a complete answer: a broken connection or an error event,
    # and no choice finished normally (ran to its max_tokens or stopped).
    assert stream.error or any("error" in chunk for chunk in stream.chunks), stream.seen()
    reasons = stream.finish_reasons()
    assert not {"length", "stop"} & set(reasons), f"finish reasons {reasons}: {stream.seen()}"
    assert code not in (0, None), f"exit code {code} (None: running {EXIT_TIMEOUT_S:.0f} s on)"
    _, left = psutil.wait_procs(children, timeout=15)  # helpers such as resource_tracker
    left = [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [(p.pid, p.name(), p.cmdline()[:3]) for p in left]
