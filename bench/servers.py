"""Start the two servers under test, time their start-up, sample their memory, stop them.

- the service: ``bentoml serve service:VLLM``, ready when ``/readyz`` answers 200;
- raw vLLM: ``python -m vllm_bento.vllm_cli serve <the service's own engine arguments>``,
  ready when ``/health`` answers 200 (vLLM listens only once the engine is up).

Both get the same engine settings (``vllm_bento.vllm_entrypoints.cli_args``) and the same
engine environment, each in its own process group.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from tests.served import stop_process
from vllm_bento.settings import EngineConfig
from vllm_bento.vllm_entrypoints import cli_args, engine_env

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BENTOML = str(Path(sys.executable).with_name("bentoml"))
READY_TIMEOUT_S = 900.0  # a compiled start takes minutes, more on a busy machine
POLL_S = 0.25


@dataclass
class Server:
    """A server process and where to reach it."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    ready_path: str
    started_at: float  # time.monotonic() just before the process was started

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_argv(port: int) -> list[str]:
    return [BENTOML, "serve", "service:VLLM", "--port", str(port), "--host", "127.0.0.1"]


def raw_vllm_argv(cfg: EngineConfig, model_path: str, port: int) -> list[str]:
    """``vllm serve`` with exactly the arguments the service gives its in-process engine."""
    return [PYTHON, "-m", "vllm_bento.vllm_cli", "serve", *cli_args(cfg, model_path),
            "--port", str(port), "--host", "127.0.0.1"]


def launch(name: str, argv: list[str], port: int, ready_path: str, log_dir: Path,
           env: dict[str, str] | None = None) -> Server:
    """Start ``argv`` (a server listening on ``port``) in its own process group."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"server-{name}.log"
    started_at = time.monotonic()
    process = subprocess.Popen(
        argv, cwd=ROOT, env={**os.environ, **engine_env(), **(env or {})},
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    return Server(name, process, port, log, ready_path, started_at)


def wait_ready(server: Server, timeout: float = READY_TIMEOUT_S) -> float:
    """Seconds from process start until the ready route answers 200.

    Raises:
        RuntimeError: the server exited first.
        TimeoutError: it was not ready within ``timeout`` seconds.
    """
    while time.monotonic() - server.started_at < timeout:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited {server.process.returncode}; see {server.log}")
        try:
            if httpx.get(server.url + server.ready_path, timeout=5).status_code == 200:
                return time.monotonic() - server.started_at
        except httpx.HTTPError:
            pass
        time.sleep(POLL_S)
    raise TimeoutError(f"{server.name} not ready after {timeout:.0f} s; see {server.log}")


def stop(server: Server, timeout: float = 60.0) -> int | None:
    """SIGTERM; SIGKILL the whole group if it has not exited within ``timeout``.
    Returns the exit code, or None when it had to be killed."""
    return stop_process(server.process, timeout)


def tree(pid: int) -> list[psutil.Process]:
    """``pid`` and its descendants (the engine runs in child processes); empty once it is gone."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


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
