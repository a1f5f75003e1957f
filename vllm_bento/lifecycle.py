"""What happens when the server is told to stop, and when the engine dies under it.

Stop (SIGTERM): the gate refuses new requests with 503 at once; requests in flight run on for
``shutdown_grace_s``; those still running are then ended by the gate (vLLM aborts their engine
requests; clients get a 503, on a stream an error event); then uvicorn's own shutdown runs the
service's shutdown hook, which stops the engine.

Stop while starting (SIGTERM before the engine serves, at any moment of its start): the start
is abandoned, not awaited. The engine's processes are killed by PID and the worker exits 0 at
once (vLLM's engine core defers SIGTERM until its start is over, minutes on a GPU, and vLLM's
set-up and its wait for the engine block the event loop). A SIGTERM that came before the start
hook began skips the engine start altogether.

Arbiter death (SIGKILL of ``bentoml serve``): a thread, independent of the event loop that an
engine start blocks, notices the worker was orphaned and ends it with its engine processes.

Several workers over one engine (``LLM_API_SERVER_COUNT``, ``vllm_bento.front_ends``): each
drains its own requests on SIGTERM; the one that launched the engine stops it once the others
have exited. Every worker watches the engine's processes, and a worker that dies without being
told to stop ends the whole server (exit code ``EXIT_CODE_FRONT_END_DIED``), as ``vllm serve``
ends when one of its API servers dies.

Engine death: the gate refuses new requests with 503 and ``/readyz`` turns 503; requests in
flight get vLLM's error; after a short pause the whole server exits non-zero, so the supervisor
that started it (Kubernetes, BentoCloud, systemd) starts a new one. In-process recovery is not
attempted: a dead engine leaves vLLM's client state unusable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import psutil

from vllm_bento.admission import Admission

if TYPE_CHECKING:
    from vllm.engine.protocol import EngineClient

logger = logging.getLogger(__name__)

ENGINE_POLL_S = 0.2
DEATH_EXIT_DELAY_S = 1.0  # lets requests in flight receive their error before the exit
EXIT_CODE_ENGINE_DEAD = 3
EXIT_CODE_ENGINE_START_FAILED = 4
EXIT_CODE_ARBITER_GONE = 5
EXIT_CODE_FRONT_END_DIED = 6
ARBITER_POLL_S = 0.5

SignalHandler = Callable[[int, FrameType | None], Any]


class EngineProcesses:
    """The engine's processes (EngineCore, its workers), noted once the engine is up.

    Noted up front because a worker whose EngineCore died is re-parented away from us and no
    longer shows up among our children, yet must not outlive the server.
    """

    def __init__(self) -> None:
        self._procs: list[psutil.Process] = []
        self._shared: list[psutil.Process] = []  # the engine's, launched by another worker

    def note(self, root: psutil.Process | None = None) -> None:
        """Note the descendants of ``root`` (this process by default), but for Python's
        multiprocessing resource tracker: it ignores SIGTERM (reaping it cost 5 s per stop),
        exits by itself once this process is gone, and cleans up what the engine leaked."""
        self._procs = [p for p in (root or psutil.Process()).children(recursive=True)
                       if not is_resource_tracker(p)]
        logger.info("Engine processes: %s", [(p.pid, p.name()) for p in self._procs])

    def share(self, pids: list[int]) -> None:
        """Note the engine core's processes, which serve every worker
        (``vllm_bento.front_ends``): watched (``shared_running``) and killed when this worker
        ends the server (``kill``), but reaped at a normal stop only by the worker that
        launched them (they are its children: ``note``)."""
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                if all(p.pid != pid for p in self._shared):
                    self._shared.append(psutil.Process(pid))

    def shared_running(self) -> bool:
        return all(running(p) for p in self._shared)

    def kill(self) -> None:
        """SIGKILL those still running, at once (the engine is already lost)."""
        for p in (*self._procs, *self._shared):
            with contextlib.suppress(psutil.Error):
                if p.is_running():
                    p.kill()

    def reap(self, timeout_s: float = 5.0) -> None:
        """Terminate those still running (SIGKILL after ``timeout_s``)."""
        alive = [p for p in self._procs if running(p)]
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        deadline = time.monotonic() + timeout_s
        while (alive := [p for p in alive if running(p)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()


async def watch_engine(engine: EngineClient, state: Admission, processes: EngineProcesses,
                       alive: Callable[[], bool] = lambda: True) -> None:
    """Poll the engine; when it has died, refuse requests and end the server. ``alive`` says
    whether its processes still run: a front end that did not launch the engine (one of
    several, ``vllm_bento.front_ends``) is not told by vLLM when they end."""
    while not engine.errored and alive():
        await asyncio.sleep(ENGINE_POLL_S)
    if state.stopping:
        return  # the engine exits on the supervisor's SIGTERM too; that is no failure
    logger.error("The vLLM engine died (%s); exiting so the supervisor restarts the server",
                 getattr(engine, "dead_error", "engine errored"))
    state.refuse("The model engine died; the server is restarting.")
    await asyncio.sleep(DEATH_EXIT_DELAY_S)
    exit_server(processes, EXIT_CODE_ENGINE_DEAD)


async def watch_front_ends(dead: Callable[[], list[tuple[int, int]]], state: Admission,
                           processes: EngineProcesses) -> None:
    """Poll ``dead`` (the (index, PID) of front ends that died without being told to stop);
    when one has, end the whole server, as ``vllm serve`` ends when an API server dies."""
    while not (gone := dead()):
        await asyncio.sleep(ENGINE_POLL_S)
    if state.stopping:
        return
    exit_front_end_died(gone, processes)


def exit_front_end_died(gone: list[tuple[int, int]], processes: EngineProcesses) -> NoReturn:
    logger.error("API server worker(s) %s died; stopping the whole server, as vllm serve does "
                 "(its engine serves every worker and none may come back on its own)",
                 ", ".join(f"{index} (pid {pid})" for index, pid in gone))
    exit_server(processes, EXIT_CODE_FRONT_END_DIED)


PARENT_AT_IMPORT = os.getppid()
"""This worker's parent (BentoML's arbiter) as the service was imported, early in its start."""


def watch_arbiter(processes: EngineProcesses) -> threading.Thread:
    """End this worker and its engine once the process that started it is gone; returns the
    (daemon) thread that watches, started.

    BentoML's arbiter (``bentoml serve``) runs the worker in a session of its own, so when the
    arbiter is SIGKILLed (an OOM killer, an impatient supervisor) nothing tells the worker: it
    would keep the engine, the GPU memory and the port, and the supervisor's restart could not
    bind. Orphaned, the worker is re-parented, which is what this polls for, every
    ``ARBITER_POLL_S``. A thread, not a task: vLLM's engine start blocks the event loop for as
    long as the engine takes to start (minutes on a GPU).
    """
    def watch() -> None:
        while os.getppid() == PARENT_AT_IMPORT:
            time.sleep(ARBITER_POLL_S)
        logger.error("The BentoML arbiter (pid %d) is gone; stopping the engine and exiting",
                     PARENT_AT_IMPORT)
        exit_server(processes, EXIT_CODE_ARBITER_GONE)

    thread = threading.Thread(target=watch, name="watch-arbiter", daemon=True)
    thread.start()
    return thread


def sibling_workers() -> list[psutil.Process]:
    """The other service workers of this worker's BentoML arbiter, while it is its parent."""
    try:
        arbiter = psutil.Process(PARENT_AT_IMPORT)
        return [p for p in arbiter.children() if p.pid != os.getpid() and running(p)
                and "_bentoml_impl.worker" in (command_line(p) or "")]
    except psutil.Error:
        return []


async def until_siblings_exit(timeout_s: float) -> None:
    """Wait up to ``timeout_s`` for the other workers to exit: the front end that launched the
    engine stops it only after the others have drained their requests through it."""
    deadline = time.monotonic() + timeout_s
    while (left := sibling_workers()) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    if left:
        logger.warning("Stopping the engine with worker(s) %s still running after %.0f s",
                       [p.pid for p in left], timeout_s)


def abandon_start() -> NoReturn:
    """End a start under way at once: kill this worker's child processes (the engine's, but for
    the resource tracker, which exits by itself and cleans up after them) and exit 0.

    Nothing is served yet, so nothing is lost, and nothing is awaited: vLLM's engine core
    defers SIGTERM until its own start is over (minutes on a GPU), and vLLM's set-up before it
    spawns the engine, and its wait for the engine, run in the event loop's thread, which would
    keep a graceful shutdown waiting for all of it (28 s seen on an H200 for the set-up alone).
    """
    try:
        kill_children()
        logger.info("Stopped while the vLLM engine was starting: its processes ended; exiting")
        for handler in logging.getLogger().handlers:  # os._exit skips the flush
            with contextlib.suppress(Exception):  # a write the signal interrupted, say
                handler.flush()
    finally:
        os._exit(0)


def kill_children(passes: int = 20) -> None:
    """SIGKILL this process's descendants, but for the resource tracker, listing them again
    until none is left: one may spawn another between a listing and its kill (an engine core
    starting its workers), and that one must not outlive the server either."""
    for _ in range(passes):
        children = [c for c in psutil.Process().children(recursive=True)
                    if running(c) and not is_resource_tracker(c)]
        if not children:
            return
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()


def exit_server(processes: EngineProcesses, code: int) -> NoReturn:
    """End this worker, its engine processes (noted or not: every descendant), and the BentoML
    arbiter that supervises it.

    The arbiter (circus, the ``bentoml serve`` process) would otherwise start a new worker and
    exit 0 when stopped, hiding the failure from the outer supervisor; it is killed so that
    ``bentoml serve`` ends non-zero.
    """
    processes.kill()  # first: an orphaned worker is no longer among our children
    kill_children()
    parent = psutil.Process().parent()
    # Only the arbiter that started this worker: once orphaned, the parent is whatever
    # adopted it (an init, a reaper), which is not ours to kill.
    if parent is not None and parent.pid == PARENT_AT_IMPORT and is_bentoml_arbiter(parent):
        parent.kill()
    os._exit(code)


def running(process: psutil.Process) -> bool:
    """Alive and not a zombie: a zombie has exited, only its parent has not collected it yet
    (psutil.wait_procs would wait out its whole timeout for one that is not our child)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def command_line(process: psutil.Process) -> str | None:
    """``process``'s command line, or None once it is gone or out of reach."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return None


def is_resource_tracker(process: psutil.Process) -> bool:
    return "multiprocessing.resource_tracker" in (command_line(process) or "")


def is_bentoml_arbiter(process: psutil.Process) -> bool:
    cmdline = command_line(process)
    return cmdline is not None and ("circus" in process.name() or "bentoml" in cmdline)


def uvicorn_should_exit(handler: object) -> bool:
    """Whether ``handler`` is uvicorn's SIGTERM handler (``Server.handle_exit``) and has already
    been called: a SIGTERM that came before this worker's start hook ran."""
    return bool(getattr(getattr(handler, "__self__", None), "should_exit", False))


def install_drain_on_sigterm(state: Admission, grace_s: float,
                             starting: Callable[[], bool] = lambda: False,
                             told: Callable[[], None] = lambda: None) -> bool:
    """Replace uvicorn's SIGTERM handler (installed before start-up hooks run) with one that
    drains first and then hands over to it. A SIGTERM while ``starting()`` ends the start and
    the worker instead (``abandon_start``). ``told`` is called first, either way (a front end
    among several marks its exit as expected).

    Returns False when uvicorn was told to exit before this was called (there is then nothing
    to start), else True.
    """
    loop = asyncio.get_running_loop()
    uvicorn_handler = signal.getsignal(signal.SIGTERM)
    if not callable(uvicorn_handler):
        logger.warning("No SIGTERM handler to chain to; shutdown will not drain")
        return True

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        told()
        if starting():
            abandon_start()
        loop.call_soon_threadsafe(
            lambda: loop.create_task(drain(state, grace_s, lambda: uvicorn_handler(signum, frame)))
        )

    signal.signal(signal.SIGTERM, on_sigterm)
    # Checked once ours is in place, so that no SIGTERM falls between the two.
    return not uvicorn_should_exit(uvicorn_handler)


async def drain(state: Admission, grace_s: float, then: Callable[[], object]) -> None:
    """``state.drain(grace_s)``, then ``then`` (uvicorn's shutdown, which would otherwise wait
    for every open connection). A second SIGTERM while draining does nothing."""
    if state.stopping:
        return
    await state.drain(grace_s)
    then()
