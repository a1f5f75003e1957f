"""Raw ``vllm serve`` with exactly the engine arguments the service uses: the baseline the
parity tests (and the benchmark) compare the service with.

    with raw_vllm("parity") as raw:
        openai.OpenAI(base_url=f"{raw.url}/v1", api_key="na")
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tests.served import ARTIFACTS, ROOT, Served, free_port, stop, wait_ready
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


def start_raw(name: str, args: list[str], env: dict[str, str] | None = None) -> Served:
    """Start ``vllm serve <args>`` (through the CPU-build shim) on a free port, in its own
    process group, logging to ``tests/artifacts/raw-vllm-<name>.log``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = ARTIFACTS / f"raw-vllm-{name}.log"
    command = [sys.executable, "-m", "vllm_bento.vllm_cli", "serve", *args,
               "--port", str(port), "--host", "127.0.0.1"]
    process = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **engine_env(), **(env or {})},
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    return Served(process=process, port=port, log=log)


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
