"""Several BentoML workers, each one a vLLM front end, over one engine core
(``LLM_API_SERVER_COUNT``, vLLM's ``--api-server-count``).

One Python process (HTTP, chat templates, tokenizing, detokenizing, SSE frames, the gate) is
what limits one front end: on an H200, ``vllm serve --api-server-count 2`` served 1.8x the
tokens of one API process at 256 streams (docs/benchmarks-gpu.md). BentoML's arbiter (circus)
starts the workers, not a Python parent of ours, so what ``vllm serve`` keeps in its parent
process lives here in a folder the workers share (``RunFolder``, one per ``bentoml serve``):

- every worker's ZMQ addresses, by index (``ipc://`` paths in the folder); worker 0 launches
  the engine core with all of them (``vllm_entrypoints.serve_openai``);
- the engine's PIDs (``engine.pids``), so that every worker watches the engine and any of them
  can end it;
- one file per worker while it serves (``worker-<i>.pid``), removed when it is told to stop: a
  worker whose file is there but whose process is gone has died, and the whole server then
  stops, as ``vllm serve`` stops when an API server dies (circus would otherwise start a
  fresh worker with no place among the others, or, inside a container, none at all);
- the sequences each worker has in flight (``SharedSequences``), so that the in-flight cap is
  the server's, whichever worker a connection lands on.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil

from vllm_bento.vllm_entrypoints import FrontEndPlace

logger = logging.getLogger(__name__)

SLOT_BYTES = 8  # one signed 64-bit count per worker


@dataclass(frozen=True)
class RunFolder:
    """The folder the workers of one ``bentoml serve`` share, named for its arbiter (PID and
    start time, so that a PID reused by a later server never finds an old folder)."""

    path: Path
    count: int  # workers (front ends)

    @classmethod
    def for_arbiter(cls, arbiter_pid: int, count: int) -> RunFolder:
        try:
            started = int(psutil.Process(arbiter_pid).create_time() * 1000)
        except psutil.Error:
            started = 0
        path = Path(tempfile.gettempdir()) / f"vllm-bento-{arbiter_pid}-{started}"
        path.mkdir(mode=0o700, exist_ok=True)
        return cls(path, count)

    def remove(self) -> None:
        """Remove the folder (by API server 0, the last to stop)."""
        shutil.rmtree(self.path, ignore_errors=True)

    def place(self, index: int) -> FrontEndPlace:
        """Worker ``index``'s (0-based) place among the front ends."""
        return FrontEndPlace(
            index=index, count=self.count,
            inputs=tuple(f"ipc://{self.path}/input-{i}" for i in range(self.count)),
            outputs=tuple(f"ipc://{self.path}/output-{i}" for i in range(self.count)))

    # The engine's processes, written by worker 0 as it launches them.
    def write_engine_pids(self, pids: list[int]) -> None:
        tmp = self.path / "engine.pids.tmp"
        tmp.write_text(" ".join(map(str, pids)))
        tmp.replace(self.path / "engine.pids")  # readers never see half a list

    def engine_pids(self) -> list[int]:
        try:
            return [int(pid) for pid in (self.path / "engine.pids").read_text().split()]
        except FileNotFoundError:
            return []

    # Which workers serve.
    def _worker_file(self, index: int) -> Path:
        return self.path / f"worker-{index}.pid"

    def died_before(self, index: int) -> int | None:
        """The PID of an earlier worker ``index`` that died without being told to stop (its
        file is still there), else None."""
        try:
            return int(self._worker_file(index).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def serving(self, index: int) -> None:
        self._worker_file(index).write_text(str(os.getpid()))

    def stopping(self, index: int) -> None:
        """Worker ``index`` was told to stop: its exit is no failure."""
        with contextlib.suppress(FileNotFoundError):
            self._worker_file(index).unlink()

    def dead_workers(self) -> list[tuple[int, int]]:
        """(index, PID) of every worker whose file is there but whose process is gone."""
        dead = []
        for index in range(self.count):
            pid = self.died_before(index)
            if pid is not None and not psutil.pid_exists(pid):
                dead.append((index, pid))
        return dead

    def worker_pids(self) -> list[int]:
        return [pid for index in range(self.count) if (pid := self.died_before(index))]


class SharedSequences:
    """The sequences each worker has in flight, in a file every worker maps: one 8-byte slot
    per worker, written only by its worker, summed under an exclusive ``flock`` so that two
    workers taking the last slots at once cannot both get them (held for microseconds)."""

    def __init__(self, path: Path, count: int, index: int) -> None:
        self.count, self.index = count, index
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_size < count * SLOT_BYTES:
                os.ftruncate(fd, count * SLOT_BYTES)
            fcntl.flock(fd, fcntl.LOCK_UN)
        self._fd = fd
        self._map = mmap.mmap(fd, count * SLOT_BYTES)
        self._slots = memoryview(self._map).cast("q")
        self._slots[index] = 0  # a worker that starts holds nothing

    def total(self) -> int:
        return sum(self._slots)

    def take(self, mine: int, sequences: int, cap: int | None) -> bool:
        """Set this worker's count to ``mine + sequences`` if the server's total then stays
        within ``cap`` (or nothing at all is in flight: a request bigger than the cap runs
        alone); False, and nothing changed, otherwise."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            total = self.total()
            if cap is not None and total > 0 and total + sequences > cap:
                return False
            self._slots[self.index] = mine + sequences
            return True
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def set_mine(self, mine: int) -> None:
        """Only ever lowers this worker's count (a release): no lock needed."""
        self._slots[self.index] = mine
