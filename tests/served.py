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
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
BENTOML = str(Path(sys.executable).with_name("bentoml"))
READY_TIMEOUT_S = 600.0  # eager start is ~45 s; leave room for a slow, shared machine


@dataclass
class Served:
    """A running `bentoml serve` and where to reach it."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def descendants(self) -> list[psutil.Process]:
        try:
            children: list[psutil.Process] = psutil.Process(self.process.pid).children(True)
            return children
        except psutil.NoSuchProcess:
            return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(served: Served, timeout: float = READY_TIMEOUT_S, path: str = "/readyz") -> float:
    """Seconds until ``path`` answers 200; raises if the server dies or never gets ready."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if served.process.poll() is not None:
            code = served.process.returncode
            raise RuntimeError(f"server exited {code}; see {served.log}")
        try:
            if httpx.get(f"{served.url}{path}", timeout=5).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(1)
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


def start(name: str, env: dict[str, str] | None = None, target: str = "service:VLLM",
          cwd: Path = ROOT) -> Served:
    """Start `bentoml serve` on a free port in its own process group, logging to artifacts."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = ARTIFACTS / f"server-{name}.log"
    env = {**os.environ, **(env or {})}
    env.setdefault("BENTOML_HOME", str(own_bentoml_home(name)))
    process = subprocess.Popen(
        [BENTOML, "serve", target, "--port", str(port), "--host", "127.0.0.1"],
        cwd=cwd, env=env,
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    return Served(process=process, port=port, log=log)


def stop(served: Served, timeout: float = 60.0) -> int | None:
    """SIGTERM, as a supervisor sends it; SIGKILL the whole group if it does not exit in time.
    Returns the exit code, or None when it had to be killed."""
    return stop_process(served.process, timeout)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 60.0) -> int | None:
    """``stop`` for any server started in its own process group (the benchmark's too)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return None


@contextmanager
def serving(name: str, env: dict[str, str] | None = None) -> Iterator[Served]:
    served = start(name, env)
    try:
        wait_ready(served)
        yield served
    finally:
        stop(served)
