"""An LLM served through vLLM's in-process async engine, behind BentoML.

Routes:
- ``/v1/*``: vLLM's own OpenAI-compatible server (chat completions, completions, models, ...).
- ``/tokenize``, ``/detokenize``: vLLM's, as ``vllm serve`` has them.
- ``/generate``: streams the model's answer to a prompt, looped back through ``/v1``.
- ``/chat``: a chat page in the browser, streaming from ``/v1/chat/completions``.
- ``/livez``, ``/readyz``, ``/metrics``: BentoML's; ready only while the engine can serve.

Every route but probes, metrics and pages sits behind ``vllm_bento.gate`` (API keys, in-flight
cap, time limit, request log). Configuration is ``vllm_bento.settings``; the serving state
(admission, engine, loopback client) is one ``vllm_bento.runtime.Runtime``, handed to the gate
and the mounts here; the vLLM wiring is ``vllm_bento.vllm_entrypoints``; shutdown and engine
death are ``vllm_bento.lifecycle``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Annotated

import bentoml
from annotated_types import Ge, Le
from pydantic import ValidationError

from vllm_bento import bento_spec, bentoml_compat, errors
from vllm_bento.chat_page import chat_routes
from vllm_bento.gate import Gate
from vllm_bento.loopback import DEFAULT_PROMPT
from vllm_bento.root_mount import root_routes
from vllm_bento.runtime import Runtime
from vllm_bento.settings import load_settings, settings_error

logger = logging.getLogger(__name__)
# BentoML configures only its own loggers; ours log through the same stream at INFO.
logging.getLogger("vllm_bento").setLevel(logging.INFO)
logging.getLogger(__name__).setLevel(logging.INFO)

bentoml_compat.fix_error_detail_schema()
bentoml_compat.log_client_errors_as_warnings()
errors.log_cut_offs_as_warnings()
bentoml_compat.log_uvicorn_errors_once()
try:
    SETTINGS = load_settings()
except ValidationError as exc:  # bentoml serve / build exit with the reason as the last line
    raise SystemExit(settings_error(exc)) from None
MAX_TOKENS = SETTINGS.max_tokens

# The engine inside it starts with the service (on_startup). With several workers
# (LLM_API_SERVER_COUNT), each is a vLLM front end and worker 1 launches the one engine.
RUNTIME = Runtime(SETTINGS, worker_id=bentoml_compat.worker_id())
bentoml_compat.bound_metric_endpoints(RUNTIME.metric_endpoint)
openai_api = RUNTIME.openai_api  # /generate's loopback reaches it in-process (see Runtime)

MODEL = bento_spec.model_ref(SETTINGS)


# /tokenize, /detokenize and the chat page at /chat
@bentoml.asgi_app(root_routes(openai_api, pages=chat_routes()), path="/")
@bentoml.asgi_app(openai_api, path="/v1")
@bentoml.service(
    name="vllm-llm",
    traffic=bento_spec.traffic(SETTINGS),
    workers=RUNTIME.api_server_count,
    tracing=bento_spec.tracing(),
    # Build arguments (`bentoml build --arg gpu_count=2`) decide these; see vllm_bento.bento_spec.
    resources=bento_spec.resources(SETTINGS),
    envs=bento_spec.envs(SETTINGS),
    image=bento_spec.image(),
    # vllm_bento.gate logs one line per model request, with token counts; BentoML's access
    # log would repeat each of them.
    logging={"access": {"enabled": False}},
)
@bento_spec.holding(bento_spec.adapter_refs(SETTINGS))  # LoRA adapters a Bento carries
class VLLM:
    """vLLM's async engine, started with the service and stopped with it."""

    model = MODEL

    def __init__(self) -> None:
        self.runtime = RUNTIME

    @bentoml.on_startup
    async def start_engine(self) -> None:
        model_path = getattr(self.model, "path", self.model)  # stored model or HF folder
        await self.runtime.start(str(model_path))

    @bentoml.on_shutdown
    async def stop_engine(self) -> None:
        await self.runtime.stop()

    async def __is_ready__(self) -> bool:
        # Admission alone, so that readiness and admission always agree: the watchdog flips
        # both when the engine dies, the drain when the server stops.
        return self.runtime.admission.refusal is None

    @bentoml.api
    async def generate(
        self,
        ctx: bentoml.Context,
        prompt: str = DEFAULT_PROMPT,
        max_tokens: Annotated[int, Ge(128), Le(MAX_TOKENS)] = MAX_TOKENS,
    ) -> AsyncGenerator[str, None]:
        """Stream the model's answer to `prompt`, up to `max_tokens` tokens."""
        # The gate gave every request an id: the inner call carries it, so both log lines
        # and vLLM's request share it.
        request_id = ctx.request.headers.get("x-request-id")
        async for text in self.runtime.loopback.stream(prompt, max_tokens,
                                                       request_id=request_id):
            yield text


# The decorator turned the class into a bentoml.Service (untyped, hence the ignore).
# Admitted /v1 requests go from the gate straight to the forwarder (see Gate.direct).
VLLM.add_asgi_middleware(Gate, admission=RUNTIME.admission,  # type: ignore[attr-defined]
                         direct={"/v1/": openai_api})
VLLM.add_asgi_middleware(bentoml_compat.UnwrapErrorList)  # type: ignore[attr-defined]
VLLM.add_asgi_middleware(bentoml_compat.JsonOnlyApis, paths=("/generate",))  # type: ignore[attr-defined]
