"""The real service with ``bench.layer.standin`` in place of vLLM, for ``make bench-layer``:
``bentoml serve bench.layer.service:VLLM`` serves the service's whole path (BentoML, the gate,
the ``/v1`` forwarder, ``/generate``'s loopback) in front of an app that costs next to nothing.

Bench-only: it swaps ``vllm_bento.vllm_entrypoints.serve_openai`` before ``service`` imports it
by name, so the service's own code runs unchanged and starts no engine.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

from bench.layer.standin import app as standin_app
from vllm_bento import vllm_entrypoints
from vllm_bento.control_tokens import ControlTokens
from vllm_bento.engine_values import EngineConfig

if TYPE_CHECKING:
    from vllm.engine.protocol import EngineClient

MAX_NUM_SEQS = 256  # vLLM's default; the service sizes its admission cap from it
# The packaged model's special tokens (its tokenizer.json), so each chat request pays the
# control-token check it pays in the service.
PACKAGED_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>",
    "<filename>", "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>",
    "<jupyter_start>", "<jupyter_text>", "<jupyter_code>", "<jupyter_output>",
    "<jupyter_script>", "<empty_output>")


class FakeEngine:
    """What the service reads of vLLM's engine client: its health and its batch size."""

    errored = False
    dead_error = None
    vllm_config = SimpleNamespace(scheduler_config=SimpleNamespace(max_num_seqs=MAX_NUM_SEQS))


@asynccontextmanager
async def serve_standin(cfg: EngineConfig,
                        model_path: str, place: vllm_entrypoints.FrontEndPlace | None = None,
                        on_engine_spawned: Callable[[list[int]], None] = lambda pids: None,
                        ) -> AsyncIterator[vllm_entrypoints.OpenAIServer]:
    """``serve_openai``'s replacement: the stand-in app, no engine (one front end)."""
    yield vllm_entrypoints.OpenAIServer(engine=cast("EngineClient", FakeEngine()),
                                        app=standin_app,
                                        control_tokens=ControlTokens(PACKAGED_SPECIAL_TOKENS))


def swap() -> None:
    """Put ``serve_standin`` in place of ``serve_openai``, before any module binds it."""
    original = vllm_entrypoints.serve_openai
    vllm_entrypoints.serve_openai = serve_standin
    bound = [name for name, module in list(sys.modules.items())
             if module is not vllm_entrypoints
             and getattr(module, "serve_openai", None) is original]
    if bound:  # it would start a real engine; fail loudly instead
        raise RuntimeError(f"{bound} imported serve_openai before bench.layer.service swapped it")


swap()

# After the swap: the service's modules bind serve_openai by name when they are imported.
from service import VLLM  # noqa: E402

__all__ = ["VLLM"]
