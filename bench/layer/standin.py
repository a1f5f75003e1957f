"""A stand-in for vLLM's OpenAI app, for ``make bench-layer``: no engine, no model, no tokenizer.

``POST /v1/chat/completions`` answers as vLLM does, with frames built once and then streamed as
fast as the event loop takes them:

- ``stream: true``: ``text/event-stream`` through a ``StreamingResponse`` over an async
  generator (vLLM's own way), ``data: {chat.completion.chunk}`` frames shaped exactly like vLLM's
  (``model_dump_json(exclude_unset=True)``): one with the assistant role and empty content, then
  ``max_tokens`` frames of one token each (the last with ``finish_reason: "length"``), a usage
  frame when ``stream_options.include_usage``, and ``data: [DONE]``;
- otherwise one ``chat.completion`` JSON with the same text.

``GET /v1/models`` and ``GET /health`` answer as vLLM's do. Run it alone with
``python -m uvicorn bench.layer.standin:app``; ``bench.layer.service`` puts it under the service.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable
from functools import lru_cache
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the service's default served model name
DEFAULT_MAX_TOKENS = 128
PROMPT_TOKENS = 17  # what SmolLM2's chat template makes of the benchmark's prompt; nothing counts
# Frames are built once, so every answer carries the same id (vLLM: one random id per request).
COMPLETION_ID = "chatcmpl-" + "0123456789abcdef" * 2
CREATED = int(time.time())
WORDS = (" Arr", ",", " I", " be", " a", " humble", " language", " model", ",", " matey", "!",
         " Ye", " asked", " who", " I", " am", ";", " I", " sail", " the", " seven", " seas",
         " of", " text", ".")
DONE = b"data: [DONE]\n\n"


def token(i: int) -> str:
    """The ``i``-th token of every answer."""
    return WORDS[i % len(WORDS)]


def answer_text(n: int) -> str:
    """The text of an ``n``-token answer, as a client that joins the deltas sees it."""
    return "".join(token(i) for i in range(n))


def usage(n: int) -> dict[str, int]:
    # vLLM's UsageInfo, in its field order (the gate's log reads prompt before completion).
    return {"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS + n,
            "completion_tokens": n}


def sse(payload: dict[str, Any]) -> bytes:
    """One SSE frame, compact JSON as pydantic's ``model_dump_json`` writes it."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
    return sse({"id": COMPLETION_ID, "object": "chat.completion.chunk", "created": CREATED,
                "model": MODEL_ID, "choices": choices, **extra})


def token_choice(i: int, n: int) -> dict[str, Any]:
    """The choice of the ``i``-th of ``n`` token chunks; vLLM sets ``stop_reason`` on the last
    one only, ``token_ids`` (None unless asked for) on each."""
    if i < n - 1:
        return {"index": 0, "delta": {"content": token(i)}, "logprobs": None,
                "finish_reason": None, "token_ids": None}
    return {"index": 0, "delta": {"content": token(i)}, "logprobs": None,
            "finish_reason": "length", "stop_reason": None, "token_ids": None}


@lru_cache(maxsize=64)
def stream_frames(n: int, include_usage: bool) -> tuple[bytes, ...]:
    """Every frame of an ``n``-token streamed answer, ``[DONE]`` last."""
    role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
            "finish_reason": None}
    frames = [chunk([role], prompt_token_ids=None, prompt_text=None)]
    frames += [chunk([token_choice(i, n)]) for i in range(n)]
    if include_usage:
        frames.append(chunk([], usage=usage(n)))
    frames.append(DONE)
    return tuple(frames)


def completion(n: int) -> dict[str, Any]:
    """The non-streamed answer: vLLM's ``chat.completion``."""
    message: dict[str, Any] = {"role": "assistant", "content": answer_text(n), "refusal": None,
               "annotations": None, "audio": None, "function_call": None, "tool_calls": [],
               "reasoning_content": None}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "length",
              "stop_reason": None}
    return {"id": COMPLETION_ID, "object": "chat.completion", "created": CREATED,
            "model": MODEL_ID, "choices": [choice], "service_tier": None,
            "system_fingerprint": None, "usage": usage(n), "prompt_logprobs": None,
            "kv_transfer_params": None}


async def stream(frames: Iterable[bytes]) -> AsyncIterator[bytes]:
    for frame in frames:
        # A real engine's tokens arrive through the event loop (an asyncio queue per request):
        # give the loop a turn per chunk, as an engine's output would.
        await asyncio.sleep(0)
        yield frame


app = FastAPI(title="vLLM stand-in (bench.layer)")


@app.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    body = await request.json()
    n = int(body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS)
    if not body.get("stream"):
        return JSONResponse(completion(n))
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    return StreamingResponse(stream(stream_frames(n, include_usage)),
                             media_type="text/event-stream")


@app.get("/v1/models")
async def models() -> dict[str, Any]:
    card = {"id": MODEL_ID, "object": "model", "created": CREATED, "owned_by": "vllm",
            "root": MODEL_ID, "parent": None, "max_model_len": 2048, "permission": []}
    return {"object": "list", "data": [card]}


@app.get("/health")
async def health() -> Response:
    return Response(status_code=200)
