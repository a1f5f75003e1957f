"""The OpenAI-compatible /v1 routes through the official openai SDK."""

from __future__ import annotations

import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from tests.conftest import MODEL

pytestmark = pytest.mark.e2e
PIRATE = [{"role": "user", "content": "Who are you? Please respond in pirate speak!"}]


def test_models_lists_the_served_model(openai_client: openai.OpenAI) -> None:
    models = openai_client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert getattr(models[0], "max_model_len", None) == 2048


def test_chat_completion(openai_client: openai.OpenAI) -> None:
    reply = openai_client.chat.completions.create(
        model=MODEL, messages=PIRATE, max_tokens=32, temperature=0)
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert len(choice.message.content or "") > 10
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 32


def test_chat_completion_streams(openai_client: openai.OpenAI) -> None:
    stream = openai_client.chat.completions.create(
        model=MODEL, messages=PIRATE, max_tokens=32, stream=True)
    texts, finish = [], None
    for chunk in stream:
        assert isinstance(chunk, ChatCompletionChunk)
        if chunk.choices:
            texts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert len([t for t in texts if t]) > 3, "expected the answer in several deltas"
    assert "".join(texts).strip()
    assert finish in ("stop", "length")


def test_text_completion(openai_client: openai.OpenAI) -> None:
    reply = openai_client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert reply.choices[0].text.strip()
    assert reply.choices[0].finish_reason in ("stop", "length")
