"""/generate through bentoml.SyncHTTPClient, and that it is the model's own answer."""

from __future__ import annotations

import bentoml
import openai
import pytest

from tests.conftest import MODEL
from vllm_bento.loopback import DEFAULT_PROMPT

pytestmark = pytest.mark.e2e


def test_generate_streams_with_the_default_prompt(bento_client: bentoml.SyncHTTPClient) -> None:
    chunks = list(bento_client.generate(max_tokens=128))
    assert len(chunks) > 3, "expected a stream of several chunks"
    assert "".join(chunks).strip()


def test_generate_is_the_models_greedy_answer(bento_client: bentoml.SyncHTTPClient,
                                              openai_client: openai.OpenAI) -> None:
    """/generate is greedy (LLM_GENERATE_TEMPERATURE=0), so it must equal a greedy chat answer
    to the same prompt: the stream is model text, not an error message."""
    generated = "".join(bento_client.generate(prompt=DEFAULT_PROMPT, max_tokens=128))
    chat = openai_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": DEFAULT_PROMPT}],
        max_tokens=128, temperature=0)
    assert generated == chat.choices[0].message.content
    assert len(generated) > 20


def test_generate_respects_max_tokens(bento_client: bentoml.SyncHTTPClient,
                                      openai_client: openai.OpenAI) -> None:
    prompt = "Tell me a long story about pirates and their ships."
    short = "".join(bento_client.generate(prompt=prompt, max_tokens=128))
    longer = "".join(bento_client.generate(prompt=prompt, max_tokens=200))
    chat = openai_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=128,
        temperature=0)
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage is not None and chat.usage.completion_tokens == 128
    assert short == chat.choices[0].message.content
    assert longer.startswith(short) and len(longer) > len(short)
