"""Parity with raw ``vllm serve``: the same greedy requests give the same texts, token counts
and finish reasons from the service as from vLLM's own server started with exactly the
service's engine arguments (``tests/raw_vllm.py``). One extra engine for the module.

Every prompt here opens with text no other test sends, so the service's prefix cache (warmed by
the other tests) holds nothing the raw server's lacks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import MODEL
from tests.raw_vllm import raw_vllm
from tests.served import Served
from tests.test_e2e_structured_tools import PIRATE_SCHEMA, TOOLS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
MAX_TOKENS = 48
STREAM: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}}


@pytest.fixture(scope="module")
def raw() -> Iterator[Served]:
    with raw_vllm("parity") as served:
        yield served


def client_for(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", timeout=300)


@dataclass(frozen=True)
class Outcome:
    """What must be equal: each choice's text (tool calls included) and finish reason, and the
    token counts."""

    texts: tuple[str, ...]
    finish_reasons: tuple[str | None, ...]
    prompt_tokens: int
    completion_tokens: int


def tool_text(calls: list[Any] | None) -> str:
    return json.dumps([[c.function.name, json.loads(c.function.arguments)] for c in calls or []])


def chat_outcome(client: openai.OpenAI, stream: bool, **request: Any) -> Outcome:
    params: dict[str, Any] = {"model": MODEL, "max_tokens": MAX_TOKENS, "temperature": 0,
                              **request}
    if not stream:
        reply = client.chat.completions.create(**params)
        assert reply.usage is not None
        return Outcome(
            tuple((c.message.content or "") + tool_text(c.message.tool_calls)
                  for c in reply.choices),
            tuple(c.finish_reason for c in reply.choices),
            reply.usage.prompt_tokens, reply.usage.completion_tokens)
    text, finish, usage = "", None, None
    calls: dict[int, tuple[str, str]] = {}
    for chunk in client.chat.completions.create(**params, **STREAM):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or []:
                name, args = calls.get(d.index, ("", ""))
                calls[d.index] = (name + (d.function.name or ""),
                                  args + (d.function.arguments or ""))
    assert usage is not None
    tools = json.dumps([[n, json.loads(a)] for n, a in calls.values()])
    return Outcome((text + tools,), (finish,), usage.prompt_tokens, usage.completion_tokens)


def completion_outcome(client: openai.OpenAI, stream: bool, prompt: str) -> Outcome:
    params: dict[str, Any] = {"model": MODEL, "prompt": prompt, "max_tokens": MAX_TOKENS,
                              "temperature": 0}
    if not stream:
        reply = client.completions.create(**params)
        assert reply.usage is not None
        return Outcome(tuple(c.text for c in reply.choices),
                       tuple(c.finish_reason for c in reply.choices),
                       reply.usage.prompt_tokens, reply.usage.completion_tokens)
    text, finish, usage = "", None, None
    for chunk in client.completions.create(**params, **STREAM):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            text += choice.text
            finish = choice.finish_reason or finish
    assert usage is not None
    return Outcome((text,), (finish,), usage.prompt_tokens, usage.completion_tokens)


CHATS: dict[str, dict[str, Any]] = {
    "plain": {"messages": [
        {"role": "system", "content": "Parity check one. You are a helpful assistant."},
        {"role": "user", "content": "Name three colours of the rainbow."}]},
    "long-answer": {"max_tokens": 128, "messages": [
        {"role": "system", "content": "Parity check two. You answer like a ship's captain."},
        {"role": "user", "content": "Tell me about your voyage across the sea."}]},
    "json-schema": {"max_tokens": 128, "messages": [
        {"role": "system", "content": "Parity check three. Answer in JSON."},
        {"role": "user", "content": "Describe a pirate."}],
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "pirate", "schema": PIRATE_SCHEMA, "strict": True}}},
    "tool-required": {"max_tokens": 128, "tools": TOOLS, "tool_choice": "required", "messages": [
        {"role": "system", "content": "Parity check four. Use the tools."},
        {"role": "user", "content": "What is the weather in Lisbon?"}]},
}
PROMPTS = {
    "story": "Parity check five. The old lighthouse keeper opened the door and",
    "list": "Parity check six. Three facts about the moon:\n1.",
}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("case", CHATS)
def test_chat_matches_raw_vllm(server: Served, raw: Served, case: str, stream: bool) -> None:
    ours = chat_outcome(client_for(server), stream, **CHATS[case])
    theirs = chat_outcome(client_for(raw), stream, **CHATS[case])
    assert ours == theirs
    assert ours.completion_tokens > 0 and ours.texts[0]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("case", PROMPTS)
def test_completion_matches_raw_vllm(server: Served, raw: Served, case: str,
                                     stream: bool) -> None:
    ours = completion_outcome(client_for(server), stream, PROMPTS[case])
    assert ours == completion_outcome(client_for(raw), stream, PROMPTS[case])
    assert ours.completion_tokens > 0


def test_models_and_tokenizer_match_raw_vllm(server: Served, raw: Served) -> None:
    def surface(served: Served) -> tuple[Any, ...]:
        (model,) = client_for(served).models.list().data
        tokens = httpx.post(f"{served.url}/tokenize", timeout=60, json={
            "model": MODEL, "messages": CHATS["plain"]["messages"]}).json()
        return model.id, model.owned_by, getattr(model, "max_model_len", None), tokens

    assert surface(server) == surface(raw)
