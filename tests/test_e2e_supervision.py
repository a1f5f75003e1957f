"""The server and its supervisors: an engine that cannot start ends the whole server, once
(`bentoml serve` exits non-zero with the error in the last lines of its log, no process left,
no restart loop of full engine starts); and a worker whose arbiter was SIGKILLed stops its
engine and exits instead of holding the port and the memory as an orphan."""

from __future__ import annotations

import signal
import socket
import subprocess
import time

import psutil
import pytest

from tests import served
from vllm_bento.lifecycle import running

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXIT_WITHIN_S = 240.0  # imports and a model load on a busy 2-core machine, then the failure


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if running(p)]


def wait_noting_processes(server: served.Served, timeout: float) -> tuple[int, set[psutil.Process]]:
    """Wait for ``server`` to exit; its exit code and every process seen in its tree meanwhile
    (engine processes rename themselves, so they are found by ancestry, not by name or
    environment).

    Raises:
        subprocess.TimeoutExpired: it did not exit within ``timeout`` seconds.
    """
    seen: set[psutil.Process] = set()
    deadline = time.monotonic() + timeout
    while server.process.poll() is None:
        seen.update(served.tree(server.process.pid))
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(server.process.args, timeout)
        time.sleep(0.2)
    return server.process.returncode, seen


@pytest.mark.parametrize(("name", "env", "last_error", "root_error"), [
    # Refused by vLLM's argument checks, before any engine process starts.
    ("bad-tool-parser", {"LLM_TOOL_CALL_PARSER": "no-such-parser"}, "no-such-parser",
     "no-such-parser"),
    # Refused by the engine's worker after the model loaded: more KV cache than the machine
    # has. vLLM's own last word is "see root cause above"; the cause is in the log, earlier.
    ("kv-too-large", {"LLM_CPU_KV_CACHE_GIB": "200"}, "Engine core initialization failed",
     "less than requested memory for kv"),
])
def test_an_engine_that_cannot_start_ends_the_server_once(
        name: str, env: dict[str, str], last_error: str, root_error: str) -> None:
    server = served.start(name, env)
    started = time.monotonic()
    try:
        code, procs = wait_noting_processes(server, EXIT_WITHIN_S)
    finally:
        served.stop(server)
    print(f"\n{name}: exit code {code} after {time.monotonic() - started:.0f} s")
    log = server.log.read_text(errors="replace")
    assert code != 0
    assert log.count("Running startup hook: start_engine") == 1, "the worker was restarted"
    assert log.count("The vLLM engine could not start") == 1 and root_error in log
    assert last_error in server.log_tail(3)
    assert len(procs) >= 2  # the arbiter and its worker at least
    deadline = time.monotonic() + 15
    while (left := alive(list(procs))) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, [(p.pid, p.name()) for p in left]


def test_a_worker_whose_arbiter_is_killed_exits_with_its_engine() -> None:
    server = served.start("orphan")
    procs: list[psutil.Process] = []
    try:
        served.wait_ready(server)
        procs = served.tree(server.process.pid)  # arbiter, worker, engine core, its worker
        assert len(procs) >= 3, procs
        server.process.send_signal(signal.SIGKILL)  # what an OOM killer does to `bentoml serve`
        server.process.wait()
        killed = time.monotonic()
        while (left := alive(procs)) and time.monotonic() - killed < 10:
            time.sleep(0.2)
        gone_after = time.monotonic() - killed
    finally:
        served.stop(server)
        for p in alive(procs):  # leave nothing to later tests, pass or fail
            p.kill()
    print(f"\norphaned worker and engine gone {gone_after:.1f} s after the arbiter")
    assert not left, [(p.pid, p.name()) for p in left]
    assert port_free_within(server.port, 10), "the port is still held"


def port_free_within(port: int, seconds: float) -> bool:
    """Whether ``port`` can be bound (as servers bind, reusing the address) within ``seconds``:
    the supervisor's restart must be able to listen there."""
    deadline = time.monotonic() + seconds
    while True:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                return True
            except OSError:
                if time.monotonic() > deadline:
                    return False
        time.sleep(0.5)
