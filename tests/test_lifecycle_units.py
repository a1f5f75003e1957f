"""Unit tests of vllm_bento.lifecycle: reaping engine processes, draining on SIGTERM."""

from __future__ import annotations

import asyncio
import subprocess
import time

import psutil

from vllm_bento.gate import GateState
from vllm_bento.lifecycle import EngineProcesses, drain


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


def test_drain_refuses_new_requests_waits_then_cancels_the_rest() -> None:
    state = GateState()
    state.open()
    handed_over: list[float] = []

    async def run() -> bool:
        stuck = asyncio.create_task(asyncio.sleep(60))
        state.tasks.add(stuck)
        state.in_flight = 1
        start = time.monotonic()
        await drain(state, 0.3, lambda: handed_over.append(time.monotonic() - start))
        return stuck.cancelled()

    cancelled = asyncio.run(run())
    assert state.stopping and state.refusal == "The server is shutting down."
    assert cancelled and handed_over and handed_over[0] >= 0.3
