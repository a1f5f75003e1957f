"""A reasoning parser at work (``LLM_REASONING_PARSER``): vLLM sends the model's thinking as
``reasoning``, apart from the answer in ``content``, streamed and not.

The packaged model does not think on its own, so a regex makes it write
``<think>...</think>answer``, the format of Qwen3 and DeepSeek-R1 models; vLLM's ``olmo3``
parser reads those tags as ordinary text (SmolLM2's vocabulary has no single ``<think>`` token,
which the ``qwen3`` and ``deepseek_r1`` parsers need). Applying the regex to the thinking too
takes ``enable_in_reasoning`` (by default vLLM constrains only the answer). One more engine,
hence ``slow``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.conftest import MODEL
from tests.served import Served, serving

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
THINK_THEN_ANSWER = (r"<think>[a-z]{2,10}( [a-z]{2,10}){2,5}\.</think>"
                     r"[A-Z][a-z]{2,10}( [a-z]{2,10}){1,4}\.")
ASK: dict[str, Any] = {
    "model": MODEL, "messages": [{"role": "user", "content": "What is two plus two?"}],
    "max_tokens": 80, "temperature": 0,
    "extra_body": {"structured_outputs": {"regex": THINK_THEN_ANSWER}},
}


ENV = {"LLM_REASONING_PARSER": "olmo3",
       "LLM_ENGINE_ARGS": "--structured-outputs-config.backend xgrammar "
                          "--structured-outputs-config.enable_in_reasoning true"}
SERVERS = {"reasoning": ENV}  # started early (conftest.pytest_runtest_setup)


@pytest.fixture(scope="module")
def reasoning_server() -> Iterator[Served]:
    with serving("reasoning", env=ENV) as served:
        yield served


@pytest.fixture
def client(reasoning_server: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{reasoning_server.url}/v1", api_key="na", timeout=300)


def test_thinking_comes_apart_from_the_answer(client: openai.OpenAI) -> None:
    message = client.chat.completions.create(**ASK).choices[0].message
    reasoning = (message.model_extra or {}).get("reasoning")
    assert reasoning and reasoning.strip().endswith("."), message
    assert message.content and message.content[0].isupper(), message
    assert "<think>" not in message.content + reasoning and "</think>" not in message.content


def test_streamed_thinking_comes_first_then_the_answer(client: openai.OpenAI) -> None:
    kinds: list[str] = []
    texts = {"reasoning": "", "content": ""}
    for chunk in client.chat.completions.create(**ASK, stream=True):
        for choice in chunk.choices:
            delta = choice.delta.model_dump()
            for kind in ("reasoning", "content"):
                if delta.get(kind):
                    texts[kind] += delta[kind]
                    if not kinds or kinds[-1] != kind:
                        kinds.append(kind)
    assert kinds == ["reasoning", "content"], kinds
    whole = client.chat.completions.create(**ASK).choices[0].message
    assert texts["content"] == whole.content
    assert texts["reasoning"] == (whole.model_extra or {}).get("reasoning")
