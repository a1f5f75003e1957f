"""Start and stop `bentoml serve` the way a user does, for the end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
# `python -m bentoml`, not the `bentoml` script beside it: a GPU host's Python may keep its
# packages (and their scripts) elsewhere (../shared/gpu/README.md).
BENTOML = [sys.executable, "-m", "bentoml"]
READY_TIMEOUT_S = 600.0  # eager start is ~45 s; leave room for a slow, shared machine

RUN_ENV = dict(os.environ)
"""The environment the test run was given, taken when this module is first imported (while
pytest collects, before any test's fixture changes ``os.environ``). Servers that tests start
get it whole: ``LLM_GPU_MEMORY_UTILIZATION`` and the rest of an operator's ``LLM_*`` settings
reach them, although unit tests see none of those (``conftest._clean_settings``)."""


@dataclass
class Served:
    """A running `bentoml serve` and where to reach it."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    started_at: float = field(default_factory=time.monotonic)  # just before the process started

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def descendants(self) -> list[psutil.Process]:
        return tree(self.process.pid)[1:]

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the server's output."""
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return f"(no log at {self.log})"
        return "\n".join(text.splitlines()[-lines:])


def tree(pid: int) -> list[psutil.Process]:
    """``pid`` and its descendants (the engine runs in child processes); empty once it is gone."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(served: Served, timeout: float = READY_TIMEOUT_S, path: str = "/readyz",
               poll_s: float = 1.0) -> float:
    """Seconds from the server's start until ``path`` answers 200. Until then every answer
    must be 503 ("not ready"), or no answer at all while the server is not listening yet: a
    server is ready only once its engine is (BentoML's ``__is_ready__``, vLLM's ``/health``).

    Raises:
        RuntimeError: the server exited first.
        AssertionError: it answered something other than 503 before it was ready.
        TimeoutError: it was not ready ``timeout`` seconds after it started.
    """
    while time.monotonic() - served.started_at < timeout:
        if served.process.poll() is not None:
            code = served.process.returncode
            raise RuntimeError(f"server exited {code}; see {served.log}")
        try:
            status = httpx.get(f"{served.url}{path}", timeout=5).status_code
        except httpx.HTTPError:
            status = None
        if status == 200:
            return time.monotonic() - served.started_at
        assert status in (None, 503), f"{path} answered {status} before ready; see {served.log}"
        time.sleep(poll_s)
    raise TimeoutError(f"not ready after {timeout:.0f} s; see {served.log}")


def own_bentoml_home(name: str) -> Path:
    """A BentoML home for one server that shares the user's model store.

    Every `bentoml serve` wipes ``$BENTOML_HOME/prometheus_multiproc_dir`` as it starts, so two
    servers sharing a home break each other's /metrics; the tests run several at once.
    """
    from bentoml._internal.configuration.containers import BentoMLContainer

    home = ARTIFACTS / f"home-{name}"
    home.mkdir(parents=True, exist_ok=True)
    models = home / "models"
    if not models.exists():
        models.symlink_to(Path(BentoMLContainer.bentoml_home.get()) / "models")
    return home


def serve_command(port: int, target: str = "service:VLLM") -> list[str]:
    """``bentoml serve`` as a user types it, on ``port`` of the loopback interface."""
    return [*BENTOML, "serve", target, "--port", str(port), "--host", "127.0.0.1"]


def server_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a server a test starts: the run's (``RUN_ENV``), then the test's own
    settings over it."""
    return {**RUN_ENV, **(env or {})}


def launch(argv: list[str], port: int, log: Path, env: dict[str, str] | None = None,
           cwd: Path = ROOT) -> Served:
    """Start the server ``argv`` (listening on ``port``) in its own process group, so that
    ``stop`` can end every process it starts; its output goes to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started_at = time.monotonic()
    process = subprocess.Popen(
        argv, cwd=cwd, env=server_env(env),
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    return Served(process=process, port=port, log=log, started_at=started_at)


def start(name: str, env: dict[str, str] | None = None, target: str = "service:VLLM",
          cwd: Path = ROOT) -> Served:
    """Start `bentoml serve` on a free port, with a BentoML home of its own unless ``env``
    names one (even when the environment sets ``BENTOML_HOME``: its model store is shared, its
    Prometheus directory is not), logging to ``tests/artifacts/server-<name>.log``.

    A server ``prestart`` started under the same name, settings and target is handed over
    instead of a new one (a prestarted one that does not match is stopped first)."""
    if (early := PRESTARTED.pop(name, None)) is not None:
        if early.request == (env or {}, target, cwd):
            return early.served
        stop(early.served)
    env = dict(env or {})
    env.setdefault("BENTOML_HOME", str(own_bentoml_home(name)))
    port = free_port()
    return launch(serve_command(port, target), port, ARTIFACTS / f"server-{name}.log", env, cwd)


@dataclass
class Prestarted:
    served: Served
    request: tuple[dict[str, str], str, Path]  # what start() was asked: env, target, cwd


PRESTARTED: dict[str, Prestarted] = {}
"""Servers started ahead of the tests that use them, by name (``prestart``)."""

OVERLAP = True
"""Whether servers may start and stop while other tests run (``prestart``, ``stop_later``).
conftest turns it off on a GPU: there the engines share the GPU's memory, each taking a fixed
fraction (``LLM_GPU_MEMORY_UTILIZATION``), so no more may be alive than the run planned for."""


def prestart(name: str, env: dict[str, str] | None = None, target: str = "service:VLLM",
             cwd: Path = ROOT) -> None:
    """Start the server that ``start(name, env, target, cwd)`` will be asked for, now, so that
    its engine loads while earlier tests run (the suite's largest wait: about a minute an
    engine here). Nothing waits on it; ``stop_prestarted`` ends those never asked for."""
    if name not in PRESTARTED:
        PRESTARTED[name] = Prestarted(start(name, env, target, cwd), (env or {}, target, cwd))


STOPPING: list[Served] = []
"""Servers sent SIGTERM by ``stop_later`` and not yet waited for."""


def stop_later(served: Served) -> None:
    """SIGTERM now; ``stop_prestarted`` waits for the exit (a server takes seconds to stop, and
    no test needs to wait for that of a server it is done with). Without ``OVERLAP``, stops
    and waits at once."""
    if not OVERLAP:
        stop(served)
        return
    if served.process.poll() is None:
        served.process.send_signal(signal.SIGTERM)
    STOPPING.append(served)


def stop_prestarted() -> None:
    """Stop every prestarted server that no test took (a run cut short, or ``-k``), and wait
    for those ``stop_later`` stopped (SIGKILL after a minute, as ``stop``)."""
    while PRESTARTED:
        stop_later(PRESTARTED.popitem()[1].served)
    while STOPPING:
        stop(STOPPING.pop())


def stop(served: Served, timeout: float = 60.0) -> int | None:
    """SIGTERM, as a supervisor sends it; SIGKILL the whole group if it does not exit in time.
    Returns the exit code, or None when it had to be killed."""
    if served.process.poll() is None:
        served.process.send_signal(signal.SIGTERM)
    try:
        return served.process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(served.process.pid, signal.SIGKILL)
        served.process.wait()
        return None


@contextmanager
def serving(name: str, env: dict[str, str] | None = None) -> Iterator[Served]:
    """A ready server (``start``), stopped when the block ends; the exit is waited for at the
    end of the session (``stop_later``)."""
    served = start(name, env)
    try:
        wait_ready(served)
        yield served
    finally:
        stop_later(served)
