"""Raw ``vllm serve`` with exactly the engine arguments the service uses: the baseline the
parity tests (and the benchmark) compare the service with.

    with raw_vllm("parity") as raw:
        openai.OpenAI(base_url=f"{raw.url}/v1", api_key="na")
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tests.served import ARTIFACTS, Served, free_port, launch, stop, wait_ready
from vllm_bento import hardware
from vllm_bento.packaged_model import ensure_packaged_model
from vllm_bento.settings import engine_config, load_settings
from vllm_bento.vllm_entrypoints import cli_args, engine_env


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


def start_raw(name: str, args: list[str], env: dict[str, str] | None = None) -> Served:
    """Start ``vllm serve <args>`` on a free port, in its own process group, with the engine
    environment the service gives its engine, logging to ``tests/artifacts/raw-vllm-<name>.log``."""
    port = free_port()
    return launch(raw_vllm_command(args, port), port, ARTIFACTS / f"raw-vllm-{name}.log",
                  {**engine_env(), **(env or {})})


@contextmanager
def raw_vllm(name: str, args: list[str] | None = None,
             env: dict[str, str] | None = None) -> Iterator[Served]:
    """A ready raw ``vllm serve`` (default: the service's engine arguments), stopped on exit.

    Raises:
        RuntimeError: the server exited before it was ready (its log is named).
        TimeoutError: it was not ready in time.
    """
    served = start_raw(name, service_engine_args() if args is None else args, env)
    try:
        # vllm serve binds its port only once the engine is up, so /health means ready.
        wait_ready(served, path="/health")
        yield served
    finally:
        stop(served)
