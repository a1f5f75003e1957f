"""Start the two servers under test, time their start-up, sample their memory, stop them.

- the service: ``bentoml serve service:VLLM``, ready when ``/readyz`` answers 200;
- raw vLLM: ``python -m vllm_bento.vllm_cli serve <the service's own engine arguments>``,
  ready when ``/health`` answers 200 (vLLM listens only once the engine is up).

Both get the same engine settings (``vllm_bento.vllm_entrypoints.cli_args``) and the same
engine environment, each in its own process group; they are started, awaited and stopped by the
end-to-end tests' own helpers (``tests.served``, ``tests.raw_vllm``).
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from launch import ROOT, Served, free_port, launch, raw_vllm_command, serve_command, stop, tree
from launch import wait_ready as wait_served
from vllm_bento.engine_values import EngineConfig
from vllm_bento.vllm_entrypoints import cli_args, engine_env

__all__ = ["ROOT", "PYTHON", "Served", "free_port", "serve_command", "raw_vllm_argv", "start",
           "wait_ready", "stop", "tree", "tree_memory", "MemorySampler"]

PYTHON = sys.executable
READY_TIMEOUT_S = 900.0  # a compiled start takes minutes, more on a busy machine
POLL_S = 0.25


def raw_vllm_argv(cfg: EngineConfig, model_path: str, port: int) -> list[str]:
    """``vllm serve`` with exactly the arguments the service gives its in-process engine."""
    return raw_vllm_command(cli_args(cfg, model_path), port)


def start(name: str, argv: list[str], port: int, log_dir: Path,
          env: dict[str, str] | None = None) -> Served:
    """Start ``argv`` (a server listening on ``port``) in its own process group, with the engine
    environment, logging to ``<log_dir>/server-<name>.log``."""
    return launch(argv, port, log_dir / f"server-{name}.log", {**engine_env(), **(env or {})})


def wait_ready(server: Served, path: str) -> float:
    """Seconds from process start until ``path`` answers 200 (polled often: start-ups are timed).

    Raises:
        RuntimeError: the server exited first.
        TimeoutError: it was not ready within ``READY_TIMEOUT_S``.
    """
    return wait_served(server, READY_TIMEOUT_S, path, POLL_S)


def tree_memory(pid: int) -> tuple[int, int]:
    """Resident and proportional set size of the process tree, in bytes. RSS counts shared pages
    (torch's libraries, in every process) once per process; PSS splits them between them."""
    rss = pss = 0
    for proc in tree(pid):
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss, pss


@dataclass
class MemorySampler:
    """Samples a process tree's memory in a background thread; keeps the peaks."""

    pid: int
    interval_s: float = 0.5
    peak_rss: int = 0
    peak_pss: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        rss, pss = tree_memory(self.pid)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._run, name=f"mem-{self.pid}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        """Stop sampling; the peaks in MiB."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return {"peak_rss_mib": self.peak_rss / 2**20, "peak_pss_mib": self.peak_pss / 2**20}
