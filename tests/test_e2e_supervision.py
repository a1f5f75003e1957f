"""The server and its supervisors: an engine that cannot start ends the whole server, once
(`bentoml serve` exits non-zero with the error in the last lines of its log, no process left,
no restart loop of full engine starts); and a worker whose arbiter was SIGKILLed stops its
engine and exits instead of holding the port and the memory as an orphan."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests import served
from vllm_bento.lifecycle import command_line, is_resource_tracker, running
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


# Moments of a start, each found from the server's own log and process tree (no fixed sleep):
# each lasts seconds here and minutes on a GPU.
HOOK_BEGUN = "Running startup hook: start_engine"
ENGINE_UP = "init engine (profile, create kv cache, warmup model) took"  # vLLM's engine core
HOOK_DONE = "Completed async startup hook: start_engine"


def has_engine(procs: list[psutil.Process]) -> bool:
    return any("EngineCore" in (command_line(p) or "") for p in procs)


def reached(server: served.Served, point: str) -> bool:
    """Whether ``server``'s start is at ``point`` now."""
    log = server.log.read_text(errors="replace")
    procs = served.tree(server.process.pid)
    if point == "worker importing the service":
        return (any("_bentoml_impl.worker" in (command_line(p) or "") for p in procs)
                and "Service vllm-llm initialized" not in log)
    if point == "hook begun, no engine process yet":
        return HOOK_BEGUN in log and not has_engine(procs)
    if point == "engine loading":
        return has_engine(procs) and ENGINE_UP not in log
    if point == "engine up, hook not returned":
        return ENGINE_UP in log and HOOK_DONE not in log
    raise ValueError(point)


def start_until(name: str, point: str) -> tuple[served.Served, set[psutil.Process]]:
    """Start a server and return once its start is at ``point``, with every process seen in
    its tree so far.

    Raises:
        AssertionError: the start passed ``point`` unseen (the log says where it was), or
            took longer than ``EXIT_WITHIN_S`` to reach it.
    """
    server = served.start(name)
    procs: set[psutil.Process] = set()
    deadline = time.monotonic() + EXIT_WITHIN_S
    while not reached(server, point):
        procs.update(p for p in served.tree(server.process.pid) if not is_resource_tracker(p))
        log = server.log.read_text(errors="replace")
        assert HOOK_DONE not in log and server.process.poll() is None, (
            f"the start passed '{point}' unseen: {server.log_tail(5)}")
        assert time.monotonic() < deadline, f"no '{point}' in {EXIT_WITHIN_S:.0f} s"
        time.sleep(0.05)
    procs.update(p for p in served.tree(server.process.pid) if not is_resource_tracker(p))
    return server, procs


SHORT = {"worker importing the service": "importing", "hook begun, no engine process yet": "hook",
         "engine loading": "loading", "engine up, hook not returned": "engine-up",
         "ready": "ready"}


@pytest.mark.parametrize("point", list(SHORT)[:4])
def test_sigterm_during_the_start_is_a_quick_clean_stop(point: str) -> None:
    """SIGTERM at any moment of the start, as a supervisor sends it: the start is abandoned
    (its engine processes killed), `bentoml serve` exits 0 well within the grace period, and
    no process is left. (Just after ready, the drain takes over: test_e2e_guarded.)"""
    server, procs = start_until(f"sigterm-{SHORT[point]}", point)
    try:
        server.process.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        code, seen = wait_noting_processes(server, GRACE_S + 30)
        gone_after = time.monotonic() - stopped
        procs.update(seen)
        while (left := alive(list(procs))) and time.monotonic() - stopped < GRACE_S + 30:
            time.sleep(0.2)
        all_gone_after = time.monotonic() - stopped
    finally:
        served.stop(server)
        for p in alive(list(procs)):  # leave nothing to later tests, pass or fail
            p.kill()
    print(f"\nSIGTERM at '{point}': exit code {code} after {gone_after:.1f} s, every process "
          f"gone after {all_gone_after:.1f} s")
    log = server.log.read_text(errors="replace")
    assert code == 0, server.log_tail(20)
    assert not left, [(p.pid, p.name()) for p in left]
    if point != "worker importing the service":  # there Python's default handler ends it
        # "before": the SIGTERM came before the start hook's own handler was in place.
        assert re.search("Stopped (while|before) the vLLM engine", log), server.log_tail(20)
    assert "could not start" not in log
    assert gone_after < GRACE_S, f"{gone_after:.1f} s to exit"


BLANK_KEYS = "Invalid settings: LLM_API_KEYS (build arg api_keys): it is set but holds no key"


def no_weights(folder: Path) -> dict[str, str]:
    shutil.copy(Path(ensure_packaged_model().path) / "config.json", folder)
    return {"LLM_MODEL_ID": str(folder)}


@pytest.mark.parametrize(("settings", "why"), [
    (no_weights, "has no weights"),
    # Fail closed: a Secret that did not mount must not open the server to everyone.
    (lambda _: {"LLM_API_KEYS": ","}, BLANK_KEYS),
    (lambda _: {"LLM_API_KEYS": " "}, BLANK_KEYS),
], ids=["model folder without weights", "API keys ','", "API keys ' '"])
def test_bad_settings_are_refused_before_any_engine_starts(
        tmp_path: Path, settings: Callable[[Path], dict[str, str]], why: str) -> None:
    server = served.start("refused", settings(tmp_path))
    try:
        code, _ = wait_noting_processes(server, 60)
    finally:
        served.stop(server)
    assert code != 0
    assert why in last_lines(server, 1), last_lines(server, 10)  # the reason, last
    assert "start_engine" not in server.log.read_text(errors="replace")


@pytest.mark.parametrize("point", list(SHORT)[1:])
def test_a_worker_whose_arbiter_is_killed_exits_with_its_engine(point: str) -> None:
    procs: list[psutil.Process] = []
    if point == "ready":
        server = served.start("orphan")
        served.wait_ready(server)
        procs = served.tree(server.process.pid)  # arbiter, worker, engine core, its worker
    else:
        server, seen = start_until(f"orphan-{SHORT[point]}", point)
        procs = list(seen)
    try:
        procs = list({*procs, *served.tree(server.process.pid)})
        # the arbiter and its worker, and the engine's processes once they exist
        assert len(procs) >= 2 and has_engine(procs) == (point != list(SHORT)[1]), procs
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
    print(f"\n{point}: orphaned worker and engine gone {gone_after:.1f} s after the arbiter")
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
