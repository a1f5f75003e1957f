"""A configured chat template replaces the model's own: a server of its own started with
``LLM_CHAT_TEMPLATE`` (one more engine, hence ``slow``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from tests.conftest import MODEL
from tests.served import Served, serving
from vllm_bento.packaged_model import ensure_packaged_model

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
TEMPLATE = Path(__file__).parent / "data" / "pirate_chat_template.jinja"
HELLO = [{"role": "user", "content": "Hello there!"}]
ENV = {"LLM_CHAT_TEMPLATE": str(TEMPLATE)}
SERVERS = {"chat-template": ENV}  # started early (conftest.pytest_runtest_setup)


@pytest.fixture(scope="module")
def templated() -> Iterator[Served]:
    with serving("chat-template", env=ENV) as served:
        yield served


def rendered_prompt(server: Served, messages: list[dict[str, str]]) -> tuple[str, int]:
    """The prompt the server builds for ``messages``, as text, and its length in tokens."""
    tokens = httpx.post(f"{server.url}/tokenize", json={"model": MODEL, "messages": messages},
                        timeout=60).json()
    text = httpx.post(f"{server.url}/detokenize",
                      json={"model": MODEL, "tokens": tokens["tokens"]}, timeout=60).json()
    return text["prompt"], tokens["count"]


def test_configured_template_renders_the_prompt(templated: Served) -> None:
    tokenizer: Any = AutoTokenizer.from_pretrained(str(ensure_packaged_model().path))
    expected = tokenizer.apply_chat_template(
        HELLO, chat_template=TEMPLATE.read_text(), add_generation_prompt=True, tokenize=False)
    prompt, count = rendered_prompt(templated, HELLO)
    assert prompt == expected
    assert "You are a pirate chatbot. Arr!" in prompt and "SmolLM" not in prompt

    client = openai.OpenAI(base_url=f"{templated.url}/v1", api_key="unused", timeout=300)
    reply = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=16, temperature=0)
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.prompt_tokens == count


def test_system_message_still_wins_over_the_templates_default(templated: Served) -> None:
    system = "You are a lighthouse keeper."
    prompt, _ = rendered_prompt(templated, [{"role": "system", "content": system}, *HELLO])
    assert prompt.startswith(f"<|im_start|>system\n{system}<|im_end|>")
    assert "pirate" not in prompt
