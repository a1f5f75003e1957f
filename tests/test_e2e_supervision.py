"""The server and its supervisors: an engine that cannot start ends the whole server, once
(`bentoml serve` exits non-zero with the error in the last lines of its log, no process left,
no restart loop of full engine starts); and a worker whose arbiter was SIGKILLed stops its
engine and exits instead of holding the port and the memory as an orphan."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests import served
from vllm_bento.lifecycle import is_resource_tracker, running
from vllm_bento.packaged_model import ensure_packaged_model
from vllm_bento.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXIT_WITHIN_S = 240.0  # imports and a model load on a busy 2-core machine, then the failure
GRACE_S = Settings.model_fields["shutdown_grace_s"].default
# Started early (conftest.pytest_runtest_setup); the others must be watched from their start.
SERVERS: dict[str, dict[str, str]] = {"orphan": {}}


def last_lines(server: served.Served, n: int) -> str:
    """The server's last ``n`` log lines, leaving out what the engine's killed helper
    processes print as they go (multiprocessing's resource tracker warns of shared memory it
    cleans up), which may come after the server's own last word."""
    lines = [line for line in server.log.read_text(errors="replace").splitlines()
             if "resource_tracker" not in line and "warnings.warn(" not in line]
    return "\n".join(lines[-n:])


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
    assert last_error in last_lines(server, 3), last_lines(server, 10)
    assert len(procs) >= 2  # the arbiter and its worker at least
    deadline = time.monotonic() + 15
    while (left := alive(list(procs))) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, [(p.pid, p.name()) for p in left]


def test_sigterm_while_the_engine_starts_is_a_clean_stop() -> None:
    """The supervisor's SIGTERM also ends the engine processes' start (circus signals the
    worker's children): that is a stop, not an engine failure, so `bentoml serve` exits 0
    within the grace period, as any stop does, leaving no process."""
    server = served.start("sigterm-starting")
    procs: set[psutil.Process] = set()
    try:
        deadline = time.monotonic() + EXIT_WITHIN_S
        while len(procs) < 3 and time.monotonic() < deadline:  # arbiter, worker, engine core
            procs.update(p for p in served.tree(server.process.pid)
                         if not is_resource_tracker(p))
            time.sleep(0.2)
        time.sleep(2)  # into the engine's start (it loads the model next)
        assert "Starting vLLM for" in server.log.read_text(errors="replace")
        assert "Application startup complete" not in server.log.read_text(errors="replace")
        server.process.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        code, seen = wait_noting_processes(server, GRACE_S + 15)
        gone_after = time.monotonic() - stopped
        procs.update(seen)
        while (left := alive(list(procs))) and time.monotonic() - stopped < GRACE_S + 15:
            time.sleep(0.2)
    finally:
        served.stop(server)
    print(f"\nstopped while starting: exit code {code} after {gone_after:.1f} s")
    log = server.log.read_text(errors="replace")
    assert code == 0, server.log_tail(20)
    assert "Stopped while the vLLM engine was starting" in log
    assert "could not start" not in log
    assert not left, [(p.pid, p.name()) for p in left]


def test_a_model_folder_without_weights_is_refused_before_any_engine_starts(
        tmp_path: Path) -> None:
    shutil.copy(Path(ensure_packaged_model().path) / "config.json", tmp_path)
    server = served.start("no-weights", {"LLM_MODEL_ID": str(tmp_path)})
    try:
        code, _ = wait_noting_processes(server, 60)
    finally:
        served.stop(server)
    assert code != 0
    assert "has no weights" in last_lines(server, 5), last_lines(server, 10)
    assert "start_engine" not in server.log.read_text(errors="replace")


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
