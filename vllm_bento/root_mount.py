"""The ASGI app BentoML mounts at ``/``: vLLM's few routes outside ``/v1`` (``/tokenize``,
``/detokenize``, as ``vllm serve`` has them), handed to the same forwarder as ``/v1``, and the
chat page (``/chat``)."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route

from vllm_bento.openai_mount import OpenAIMount

ROOT_PATHS = ("/tokenize", "/detokenize")
"""vLLM's routes outside ``/v1`` that the service exposes, at the same paths as ``vllm serve``."""


def root_routes(forwarder: OpenAIMount, paths: tuple[str, ...] = ROOT_PATHS,
                pages: Sequence[BaseRoute] = ()) -> Starlette:
    """An app to mount at ``/`` that sends exactly ``paths`` to ``forwarder``, and serves
    ``pages`` (the chat page's routes).

    Being a Starlette app, BentoML's mount matches only the paths it routes, so every other
    path (``/``, ``/docs.json``, the service's APIs) stays BentoML's; mounting ``forwarder``
    itself at ``/`` would capture them all.
    """
    return Starlette(routes=[*(Route(path, forwarder) for path in paths), *pages])
