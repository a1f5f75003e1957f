"""An LLM served through vLLM's in-process async engine, behind BentoML.

Routes:
- ``/v1/*``: vLLM's own OpenAI-compatible server (chat completions, completions, models, ...).
- ``/tokenize``, ``/detokenize``: vLLM's, as ``vllm serve`` has them.
- ``/generate``: streams the model's answer to a prompt, looped back through ``/v1``.
- ``/chat``: a chat page in the browser, streaming from ``/v1/chat/completions``.
- ``/livez``, ``/readyz``, ``/metrics``: BentoML's; ready only while the engine can serve.

Both model routes sit behind ``vllm_bento.gate`` (API keys, in-flight cap, time limit, request
log). Configuration is ``vllm_bento.settings``; the vLLM wiring is ``vllm_bento.vllm_entrypoints``;
shutdown and engine death are ``vllm_bento.lifecycle``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack
from typing import Annotated

import bentoml
from annotated_types import Ge, Le

from vllm_bento import bento_spec, bentoml_compat, errors, hardware, lifecycle
from vllm_bento.chat_page import chat_app
from vllm_bento.gate import STATE as GATE
from vllm_bento.gate import Gate
from vllm_bento.loopback import DEFAULT_PROMPT, LoopbackChat, base_url_for
from vllm_bento.openai_mount import OpenAIMount
from vllm_bento.root_mount import root_routes
from vllm_bento.settings import engine_config, load_settings
from vllm_bento.vllm_entrypoints import OpenAIServer, serve_openai

logger = logging.getLogger(__name__)
# BentoML configures only its own loggers; ours log through the same stream at INFO.
logging.getLogger("vllm_bento").setLevel(logging.INFO)
logging.getLogger(__name__).setLevel(logging.INFO)

bentoml_compat.fix_error_detail_schema()
bentoml_compat.log_client_errors_as_warnings()
errors.log_cut_offs_as_warnings()
bentoml_compat.log_uvicorn_errors_once()
SETTINGS = load_settings()
MAX_TOKENS = SETTINGS.max_tokens

openai_api = OpenAIMount()

MODEL = bento_spec.model_ref(SETTINGS)


@bentoml.asgi_app(root_routes(openai_api), path="/")  # /tokenize, /detokenize
@bentoml.asgi_app(openai_api, path="/v1")
@bentoml.asgi_app(chat_app(), path="/chat")
@bentoml.service(
    name="vllm-llm",
    traffic={"timeout": 300},
    # Build arguments (`bentoml build --arg gpu_count=2`) decide these; see vllm_bento.bento_spec.
    resources=bento_spec.resources(SETTINGS),
    envs=bento_spec.envs(SETTINGS),
    image=bento_spec.image(),
    # vllm_bento.gate logs one line per model request, with token counts; BentoML's access
    # log would repeat each of them.
    logging={"access": {"enabled": False}},
)
class VLLM:
    """vLLM's async engine, started with the service and stopped with it."""

    model = MODEL

    def __init__(self) -> None:
        self.settings = SETTINGS
        self.server: OpenAIServer | None = None
        self._stack = AsyncExitStack()
        self._watchdog: asyncio.Task[None] | None = None
        GATE.api_keys = SETTINGS.api_key_list
        GATE.max_in_flight = SETTINGS.max_in_flight
        GATE.request_timeout_s = SETTINGS.request_timeout_s
        self.loopback = LoopbackChat(
            SETTINGS.model_id, SETTINGS.generate_temperature, GATE.loopback_token
        )

    @bentoml.on_startup
    async def start_engine(self) -> None:
        lifecycle.install_drain_on_sigterm(GATE, self.settings.shutdown_grace_s)
        cfg = engine_config(self.settings, hardware.detect())
        model_path = getattr(self.model, "path", self.model)  # stored model or HF folder
        logger.info("Starting vLLM for %s from %s: %s", cfg.served_model_name, model_path, cfg)
        self.server = await self._stack.enter_async_context(serve_openai(cfg, str(model_path)))
        openai_api.target = self.server.app
        lifecycle.ENGINE_PROCESSES.note()
        self._watchdog = asyncio.create_task(lifecycle.watch_engine(self.server.engine, GATE))
        GATE.open()

    @bentoml.on_shutdown
    async def stop_engine(self) -> None:
        GATE.stop()
        if self._watchdog is not None:
            self._watchdog.cancel()
        openai_api.target = None
        self.server = None
        await self._stack.aclose()
        lifecycle.ENGINE_PROCESSES.reap()  # none may outlive the server, orphaned or not

    async def __is_ready__(self) -> bool:
        # The gate's state alone, so that readiness and admission always agree: the watchdog
        # flips both when the engine dies, the drain when the server stops.
        return GATE.refusal is None

    @bentoml.api
    async def generate(
        self,
        ctx: bentoml.Context,
        prompt: str = DEFAULT_PROMPT,
        max_tokens: Annotated[int, Ge(128), Le(MAX_TOKENS)] = MAX_TOKENS,
    ) -> AsyncGenerator[str, None]:
        """Stream the model's answer to `prompt`, up to `max_tokens` tokens."""
        base_url = base_url_for(ctx.request.scope.get("server"))
        async for text in self.loopback.stream(base_url, prompt, max_tokens):
            yield text


# The decorator turned the class into a bentoml.Service (untyped, hence the ignore).
VLLM.add_asgi_middleware(Gate)  # type: ignore[attr-defined]
VLLM.add_asgi_middleware(bentoml_compat.UnwrapErrorList)  # type: ignore[attr-defined]
VLLM.add_asgi_middleware(bentoml_compat.JsonOnlyApis, paths=("/generate",))  # type: ignore[attr-defined]
