"""Start and stop `bentoml serve` the way a user does, for the end-to-end tests: the shared
launching code (``launch.py``, which the benchmarks use too) with the run's environment, servers
started ahead of the tests that use them, and stops that are not waited for."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import launch as launching
from launch import (
    ARTIFACTS,
    BENTOML,
    READY_TIMEOUT_S,
    ROOT,
    Served,
    free_port,
    own_bentoml_home,
    serve_command,
    stop,
    tree,
    wait_ready,
)

__all__ = [  # the launching names re-exported: the tests' one import for serving
    "ARTIFACTS", "BENTOML", "READY_TIMEOUT_S", "ROOT", "RUN_ENV", "Served", "free_port",
    "launch", "launching", "own_bentoml_home", "prestart", "serve_command", "server_env",
    "serving", "start", "stop", "stop_later", "stop_prestarted", "tree", "wait_ready",
]

RUN_ENV = dict(os.environ)
"""The environment the test run was given, taken when this module is first imported (while
pytest collects, before any test's fixture changes ``os.environ``). Servers that tests start
get it whole: ``LLM_GPU_MEMORY_UTILIZATION`` and the rest of an operator's ``LLM_*`` settings
reach them, although unit tests see none of those (``conftest._clean_settings``)."""


def server_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a server a test starts: the run's (``RUN_ENV``), then the test's own
    settings over it."""
    return {**RUN_ENV, **(env or {})}


def launch(argv: list[str], port: int, log: Path, env: dict[str, str] | None = None,
           cwd: Path = ROOT) -> Served:
    """``launching.launch`` with the run's environment (``server_env``) under ``env``."""
    return launching.launch(argv, port, log, env, cwd, base_env=RUN_ENV)


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
    return launching.start(name, env, target, cwd, base_env=RUN_ENV)


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
