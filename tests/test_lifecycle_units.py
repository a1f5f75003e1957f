"""Unit tests of vllm_bento.lifecycle: reaping engine processes, draining on SIGTERM."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Coroutine
from typing import Any

import psutil
import pytest

from vllm_bento import admission
from vllm_bento.admission import Admission, Admitted, default_max_in_flight
from vllm_bento.lifecycle import EngineProcesses, drain, running


def test_reap_ends_noted_processes_even_once_orphaned() -> None:
    # A shell whose child outlives it: the child is re-parented away, as a vLLM worker is when
    # its EngineCore dies.
    shell = subprocess.Popen(["bash", "-c", "sleep 60 & sleep 2"])
    time.sleep(0.5)
    procs = EngineProcesses()
    procs.note(psutil.Process(shell.pid))  # not pytest's own children: other servers run there
    sleeper = next(p for p in psutil.Process(shell.pid).children() if "60" in p.cmdline())
    shell.wait()
    assert sleeper.is_running() and sleeper.ppid() != shell.pid
    procs.reap(timeout_s=2)
    assert not sleeper.is_running() or sleeper.status() == psutil.STATUS_ZOMBIE


def test_reap_leaves_the_multiprocessing_resource_tracker_alone() -> None:
    """It ignores SIGTERM (reaping it made every stop wait 5 s) and ends once the server does."""
    tracker_like = "import multiprocessing.resource_tracker, time; time.sleep(60)"
    shell = subprocess.Popen(["bash", "-c", f"python3 -c '{tracker_like}' & sleep 60 & wait"])
    try:
        time.sleep(1)
        procs = EngineProcesses()
        procs.note(psutil.Process(shell.pid))
        children = psutil.Process(shell.pid).children()
        tracker = next(p for p in children if "resource_tracker" in " ".join(p.cmdline()))
        sleeper = next(p for p in children if p is not tracker)
        start = time.monotonic()
        procs.reap(timeout_s=5)
        assert time.monotonic() - start < 2
        assert tracker.is_running() and not running(sleeper)  # a zombie has exited
    finally:
        for p in psutil.Process(shell.pid).children():
            p.kill()
        shell.kill()
        shell.wait()


def drain_with(request_task: Callable[[Admitted], Coroutine[Any, Any, None]],
               state: Admission, grace_s: float) -> tuple[float, bool]:
    """Drain ``state`` with one request in flight running ``request_task``; returns when the
    drain handed over to uvicorn, in seconds, and whether the request had to be cancelled."""

    async def run() -> tuple[float, bool]:
        request = Admitted(None)
        request.task = asyncio.create_task(request_task(request))
        state.admitted.add(request)
        start = time.monotonic()
        handed_over: list[float] = []
        await drain(state, grace_s, lambda: handed_over.append(time.monotonic() - start))
        await asyncio.sleep(0)
        return handed_over[0], request.task.cancelled()

    return asyncio.run(run())


def test_drain_refuses_new_requests_waits_then_ends_the_rest_early() -> None:
    state = Admission()
    state.open()

    async def ends_when_cut(request: Admitted) -> None:  # as the gate's requests do
        await request.cut.wait()
        state.admitted.discard(request)

    handed_over_s, cancelled = drain_with(ends_when_cut, state, grace_s=0.3)
    assert state.stopping and state.refusal == "The server is shutting down."
    assert 0.3 <= handed_over_s < 1.0 and not cancelled


def test_drain_cancels_a_request_that_does_not_end_when_cut(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admission, "ABORT_WAIT_S", 0.2)
    state = Admission()
    state.open()

    async def deaf(request: Admitted) -> None:
        await asyncio.sleep(60)

    handed_over_s, cancelled = drain_with(deaf, state, grace_s=0.3)
    assert 0.3 + 1.2 <= handed_over_s < 3.0 and cancelled


def test_default_cap_lets_a_full_batch_wait_behind_the_running_one() -> None:
    # vLLM's defaults: 256 sequences on most GPUs, 1024 on H100/H200-class ones.
    assert default_max_in_flight(256) == 512 and default_max_in_flight(1024) == 2048
