"""The ASGI app BentoML mounts at ``/v1``: it hands each request to vLLM's OpenAI app once the
engine is up, and answers 503 in the OpenAI error shape before that and after shutdown."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vllm_bento.errors import openai_error

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send


class OpenAIMount:
    """Forwards to ``target`` (vLLM's FastAPI app), set when the engine is ready."""

    def __init__(self) -> None:
        self.target: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return  # BentoML owns the process lifespan; the engine starts in on_startup.
        if self.target is None:
            response = openai_error(503, "The model engine is not running.", "service_unavailable")
            await response(scope, receive, send)
            return
        # Starlette's Mount set root_path to ".../v1"; vLLM's routes carry the /v1 prefix
        # themselves, so give vLLM the path as the client sent it.
        child = dict(scope)
        child["root_path"] = scope.get("app_root_path", "")
        await self.target(child, receive, send)
