"""Start and stop servers the way a user does: `bentoml serve` (this service) and raw `vllm serve`
with the service's own engine arguments, each in a process group of its own, on a free port of
the loopback interface. Shared by the end-to-end tests (``tests/served.py``) and the benchmarks
(``bench/``); not part of the Bento."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from vllm_bento import hardware
from vllm_bento.packaged_model import ensure_packaged_model
from vllm_bento.settings import engine_config, load_settings
from vllm_bento.vllm_entrypoints import cli_args, engine_env

ROOT = Path(__file__).resolve().parent
ARTIFACTS = ROOT / "tests" / "artifacts"
# `python -m bentoml`, not the `bentoml` script beside it: a GPU host's Python may keep its
# packages (and their scripts) elsewhere (../shared/gpu/README.md).
BENTOML = [sys.executable, "-m", "bentoml"]
READY_TIMEOUT_S = 600.0  # eager start is ~45 s; leave room for a slow, shared machine


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


def launch(argv: list[str], port: int, log: Path, env: dict[str, str] | None = None,
           cwd: Path = ROOT, base_env: Mapping[str, str] | None = None) -> Served:
    """Start the server ``argv`` (listening on ``port``) in its own process group, so that
    ``stop`` can end every process it starts; its output goes to ``log``. Its environment is
    ``base_env`` (default: this process's) with ``env`` over it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started_at = time.monotonic()
    process = subprocess.Popen(
        argv, cwd=cwd, env={**(os.environ if base_env is None else base_env), **(env or {})},
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    return Served(process=process, port=port, log=log, started_at=started_at)


def start(name: str, env: dict[str, str] | None = None, target: str = "service:VLLM",
          cwd: Path = ROOT, base_env: Mapping[str, str] | None = None) -> Served:
    """Start `bentoml serve` on a free port, with a BentoML home of its own unless ``env``
    names one (even when the environment sets ``BENTOML_HOME``: its model store is shared, its
    Prometheus directory is not), logging to ``tests/artifacts/server-<name>.log``."""
    env = dict(env or {})
    env.setdefault("BENTOML_HOME", str(own_bentoml_home(name)))
    port = free_port()
    return launch(serve_command(port, target), port, ARTIFACTS / f"server-{name}.log", env, cwd,
                  base_env)


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


def service_engine_args(model_path: str | None = None) -> list[str]:
    """The ``vllm serve`` arguments the service starts its engine with, under this process's
    environment (``LLM_*``), on this machine.

    ``model_path`` defaults to the packaged model in the BentoML store (prepared if missing).

    Raises:
        PackagedModelMissing: no ``model_path`` given and the packaged model cannot be prepared.
    """
    path = model_path or str(ensure_packaged_model().path)
    return cli_args(engine_config(load_settings(), hardware.detect()), path)


def raw_vllm_command(args: list[str], port: int) -> list[str]:
    """``vllm serve <args>`` (through the CPU-build shim) on ``port`` of the loopback interface."""
    return [sys.executable, "-m", "vllm_bento.vllm_cli", "serve", *args,
            "--port", str(port), "--host", "127.0.0.1"]


def start_raw(name: str, args: list[str], env: dict[str, str] | None = None,
              base_env: Mapping[str, str] | None = None) -> Served:
    """Start ``vllm serve <args>`` on a free port, in its own process group, with the engine
    environment the service gives its engine, logging to ``tests/artifacts/raw-vllm-<name>.log``."""
    port = free_port()
    return launch(raw_vllm_command(args, port), port, ARTIFACTS / f"raw-vllm-{name}.log",
                  {**engine_env(), **(env or {})}, base_env=base_env)
