"""Unit tests of vllm_bento.lifecycle: reaping engine processes, draining on SIGTERM.

No test sleeps for a process to start or hopes a step is quick: the processes say when they are
ready (a line on stdout, read with a deadline), the drain's steps are recorded in the order
they happen, and a time bound is kept only where it is the contract, generous against a timeout
under test that is far longer, so a loaded 2-core machine passes and a broken early return
fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import select
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest

from vllm_bento import admission, lifecycle
from vllm_bento.admission import SHUTDOWN, Admission, Admitted, default_max_in_flight
from vllm_bento.lifecycle import EngineProcesses, drain, running

REAP_TIMEOUT_S = 60.0  # what reap would wait for a process that ignores SIGTERM
REAP_BOUND_S = 10.0  # reap of processes that end on SIGTERM returns well before that
WAIT_S = 60.0  # for a process to report, a task to end: a deadline, not an expected time


@contextlib.contextmanager
def shell(script: str) -> Iterator[subprocess.Popen[bytes]]:
    """``bash -c script``, its stdout unbuffered for ``printed``; on exit the shell and its
    children still under it are killed."""
    with subprocess.Popen(["bash", "-c", script], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, bufsize=0) as process:
        root = psutil.Process(process.pid)
        try:
            yield process
        finally:
            children: list[psutil.Process] = []
            with contextlib.suppress(psutil.Error):  # gone: its children are orphans
                children = root.children(recursive=True)
            for p in children:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            process.kill()


def printed(process: subprocess.Popen[bytes], count: int) -> dict[str, int]:
    """The first ``count`` lines ``process`` prints, each ``<name> <pid>``, as {name: pid}.

    Raises:
        AssertionError: they did not all come within ``WAIT_S``; says which did.
    """
    assert process.stdout is not None
    seen: dict[str, int] = {}
    deadline = time.monotonic() + WAIT_S
    while len(seen) < count:
        ready, _, _ = select.select([process.stdout], [], [], max(0, deadline - time.monotonic()))
        line = process.stdout.readline().decode() if ready else ""  # unbuffered: no line held
        if not line:
            raise AssertionError(f"{count} lines expected within {WAIT_S:.0f} s, got {seen} "
                                 f"(shell {'running' if process.poll() is None else 'exited'})")
        name, pid = line.split()
        seen[name] = int(pid)
    return seen


def test_reap_ends_noted_processes_even_once_orphaned() -> None:
    # A shell whose child outlives it: the child is re-parented away, as a vLLM worker is when
    # its EngineCore dies. The shell names its child, then exits when the test closes its stdin.
    with shell("sleep 60 & echo sleeper $!; read _") as orphaning:
        sleeper = psutil.Process(printed(orphaning, 1)["sleeper"])
        try:
            procs = EngineProcesses()
            procs.note(psutil.Process(orphaning.pid))  # not pytest's: other servers run there
            assert orphaning.stdin is not None
            orphaning.stdin.close()
            orphaning.wait(timeout=WAIT_S)
            assert running(sleeper) and sleeper.ppid() != orphaning.pid
            start = time.monotonic()
            procs.reap(timeout_s=REAP_TIMEOUT_S)
            took = time.monotonic() - start
            assert not running(sleeper), "reap returned with the orphan still running"
            # It ended on SIGTERM: reap returned then, not after its timeout.
            assert took < REAP_BOUND_S, f"reap took {took:.1f} s for a process ending on SIGTERM"
        finally:
            with contextlib.suppress(psutil.Error):
                sleeper.kill()  # an orphan: the shell's clean-up no longer finds it


# The resource tracker's command line, and as it does, SIGTERM ignored; says so once it is.
TRACKER_LIKE = ("import multiprocessing.resource_tracker, os, signal, time; "
                "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('tracker', os.getpid(), flush=True); time.sleep(60)")


def test_reap_leaves_the_multiprocessing_resource_tracker_alone() -> None:
    """It ignores SIGTERM (reaping it made every stop wait 5 s) and ends once the server does."""
    script = (f"{shlex.quote(sys.executable)} -c {shlex.quote(TRACKER_LIKE)} & "
              "sleep 60 & echo sleeper $!; wait")
    with shell(script) as server:
        pids = printed(server, 2)  # the tracker's line comes once SIGTERM is ignored
        tracker, sleeper = psutil.Process(pids["tracker"]), psutil.Process(pids["sleeper"])
        procs = EngineProcesses()
        procs.note(psutil.Process(server.pid))
        start = time.monotonic()
        procs.reap(timeout_s=REAP_TIMEOUT_S)
        took = time.monotonic() - start
        assert running(tracker), "the resource tracker was reaped"
        assert not running(sleeper), "reap returned with an engine process still running"
        # Reaping the tracker too would wait out the whole timeout, then kill it.
        assert took < REAP_BOUND_S, f"reap took {took:.1f} s: it waited for the tracker"


@dataclass
class Drained:
    """What a drain did to the one request in flight, steps in the order they happened."""

    steps: list[str] = field(default_factory=list)
    # Seconds from the drain's start; NaN (which fails every bound) until it happened.
    cut_s: float = math.nan  # the request was told to end
    handed_over_s: float = math.nan  # the drain handed over to uvicorn
    cancelled: bool = False


def drain_with(request_task: Callable[[Admitted, Drained], Coroutine[Any, Any, None]],
               state: Admission, grace_s: float) -> Drained:
    """Drain ``state`` with one request in flight running ``request_task``, which may add its
    own steps; returns once the drain handed over and the request's task ended (or ``WAIT_S``
    passed: then ``cancelled`` is False)."""
    drained = Drained()

    async def run() -> None:
        request = Admitted(None)
        request.task = asyncio.create_task(request_task(request, drained))
        state.admitted.add(request)
        start = time.monotonic()

        async def note_cut() -> None:
            await request.cut.wait()
            drained.cut_s = time.monotonic() - start

        watcher = asyncio.create_task(note_cut())

        def hand_over() -> None:
            drained.handed_over_s = time.monotonic() - start
            drained.steps.append("handed over")

        await drain(state, grace_s, hand_over)
        await asyncio.wait({request.task}, timeout=WAIT_S)
        drained.cancelled = request.task.cancelled()
        watcher.cancel()

    asyncio.run(run())
    assert not math.isnan(drained.handed_over_s), f"the drain never handed over: {drained}"
    return drained


def test_drain_refuses_new_requests_waits_then_ends_the_rest_early(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Far above the bound below: a drain that waited this out after the request ended, instead
    # of handing over at once, fails.
    monkeypatch.setattr(admission, "ABORT_WAIT_S", 60.0)
    state = Admission()
    state.open()
    grace_s = 0.3

    async def ends_when_cut(request: Admitted, drained: Drained) -> None:  # as the gate's do
        drained.steps.append(f"running, refusal: {state.refusal}")
        await request.cut.wait()
        drained.steps.append("ended")
        state.admitted.discard(request)

    drained = drain_with(ends_when_cut, state, grace_s)
    assert state.stopping and state.refusal == SHUTDOWN
    # New requests were refused from the start, while this one ran on; it was ended (not
    # cancelled) and only then did the drain hand over.
    assert drained.steps == [f"running, refusal: {SHUTDOWN}", "ended", "handed over"], drained
    assert not drained.cancelled
    assert drained.cut_s >= grace_s, drained  # only once the grace ran out
    assert drained.handed_over_s < grace_s + 10, drained


def test_drain_cancels_a_request_that_does_not_end_when_cut(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admission, "ABORT_WAIT_S", 0.2)
    state = Admission()
    state.open()
    grace_s = 0.3

    async def deaf(request: Admitted, drained: Drained) -> None:
        await asyncio.Event().wait()  # ignores the cut: only cancelling ends it

    drained = drain_with(deaf, state, grace_s)
    assert drained.cancelled, f"still running {WAIT_S:.0f} s after the drain: {drained}"
    assert drained.cut_s >= grace_s, drained
    # Cancelled only once it ignored the cut for ABORT_WAIT_S (+ 1 s), not at once.
    assert drained.handed_over_s >= grace_s + 0.2 + 1, drained


def test_default_cap_lets_a_full_batch_wait_behind_the_running_one() -> None:
    # vLLM's defaults: 256 sequences on most GPUs, 1024 on H100/H200-class ones.
    assert default_max_in_flight(256) == 512 and default_max_in_flight(1024) == 2048


ABANDONING_WORKER = """
import subprocess, sys
from vllm_bento import lifecycle
child = subprocess.Popen(["sleep", "600"])  # an engine process, in its start
print("child", child.pid, flush=True)
sys.stdin.readline()
lifecycle.abandon_start()
"""


def test_abandon_start_kills_the_engine_processes_and_exits_0() -> None:
    """A start under way is abandoned, not awaited: the worker kills its children and exits 0
    at once."""
    with subprocess.Popen([sys.executable, "-c", ABANDONING_WORKER], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, bufsize=0) as worker:
        child = psutil.Process(printed(worker, 1)["child"])
        assert worker.stdin is not None
        worker.stdin.write(b"go\n")
        assert worker.wait(WAIT_S) == 0
        child.wait(WAIT_S)  # raises psutil.TimeoutExpired if it was left running


def test_a_sigterm_before_the_hook_is_seen_in_uvicorns_handler() -> None:
    class Server:  # uvicorn.Server's shape: handle_exit sets should_exit
        should_exit = False

        def handle_exit(self, sig: int, frame: object) -> None:
            self.should_exit = True

    server = Server()
    assert not lifecycle.uvicorn_should_exit(server.handle_exit)
    server.handle_exit(15, None)
    assert lifecycle.uvicorn_should_exit(server.handle_exit)
    assert not lifecycle.uvicorn_should_exit(lambda *_: None)  # not uvicorn's: no such state
