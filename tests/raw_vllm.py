"""Raw ``vllm serve`` with exactly the engine arguments the service uses: the baseline the
parity tests (and the benchmark) compare the service with.

    with raw_vllm("parity") as raw:
        openai.OpenAI(base_url=f"{raw.url}/v1", api_key="na")
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from launch import raw_vllm_command, service_engine_args

__all__ = ["raw_vllm", "raw_vllm_command", "service_engine_args", "start_raw"]
from tests.served import RUN_ENV, Served, launching, stop, wait_ready


def start_raw(name: str, args: list[str], env: dict[str, str] | None = None) -> Served:
    """``launching.start_raw`` with the run's environment (``served.RUN_ENV``) under ``env``."""
    return launching.start_raw(name, args, env, base_env=RUN_ENV)


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
