"""The server and its supervisors: an engine that cannot start ends the whole server, once
(`bentoml serve` exits non-zero with the error in the last lines of its log, no process left,
no restart loop of full engine starts); and a worker whose arbiter was SIGKILLed stops its
engine and exits instead of holding the port and the memory as an orphan."""

from __future__ import annotations

import signal
import socket
import time

import psutil
import pytest

from tests import served

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXIT_WITHIN_S = 240.0  # imports and a model load on a busy 2-core machine, then the failure


def processes_of(home: str) -> list[psutil.Process]:
    """Processes started with ``BENTOML_HOME=home``: the arbiter, the worker, the engine."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("BENTOML_HOME") == home and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


@pytest.mark.parametrize(("name", "env", "cause"), [
    # Refused by vLLM's argument checks, before any engine process starts.
    ("bad-tool-parser", {"LLM_TOOL_CALL_PARSER": "no-such-parser"}, "no-such-parser"),
    # Refused by the engine process after the model loaded: more KV cache than the machine has.
    ("kv-too-large", {"LLM_CPU_KV_CACHE_GIB": "200"}, "Engine core initialization failed"),
])
def test_an_engine_that_cannot_start_ends_the_server_once(
        name: str, env: dict[str, str], cause: str) -> None:
    home = str(served.own_bentoml_home(name))
    server = served.start(name, {**env, "BENTOML_HOME": home})
    started = time.monotonic()
    try:
        code = server.process.wait(timeout=EXIT_WITHIN_S)
    finally:
        served.stop(server)
    print(f"\n{name}: exit code {code} after {time.monotonic() - started:.0f} s")
    log = server.log.read_text(errors="replace")
    assert code != 0
    assert log.count("Running startup hook: start_engine") == 1, "the worker was restarted"
    tail = server.log_tail(40)
    assert "The vLLM engine could not start" in tail and cause in tail
    deadline = time.monotonic() + 15
    while (left := processes_of(home)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, [(p.pid, p.name()) for p in left]


def test_a_worker_whose_arbiter_is_killed_exits_with_its_engine() -> None:
    home = str(served.own_bentoml_home("orphan"))
    server = served.start("orphan", {"BENTOML_HOME": home})
    try:
        served.wait_ready(server)
        assert len(processes_of(home)) >= 3  # arbiter, worker, engine core
        server.process.send_signal(signal.SIGKILL)  # what an OOM killer does to `bentoml serve`
        server.process.wait()
        killed = time.monotonic()
        while (left := processes_of(home)) and time.monotonic() - killed < 10:
            time.sleep(0.2)
        gone_after = time.monotonic() - killed
    finally:
        served.stop(server)
        for p in processes_of(home):  # leave nothing to later tests, pass or fail
            p.kill()
    print(f"\norphaned worker and engine gone {gone_after:.1f} s after the arbiter")
    assert not left, [(p.pid, p.name()) for p in left]
    with socket.socket() as s:  # the port is free for the supervisor's restart
        s.bind(("127.0.0.1", server.port))
