"""/generate through bentoml.SyncHTTPClient, and that it is the model's own answer."""

from __future__ import annotations

import time

import bentoml
import openai
import pytest

from tests.conftest import MODEL
from tests.metrics import scrape
from tests.served import Served
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


def test_generate_loops_back_in_process_to_the_gate(server: Served,
                                                    bento_client: bentoml.SyncHTTPClient) -> None:
    """The inner chat request is the gate's (its log line, marked loopback) but not a second
    request of BentoML's: its request metrics, which autoscaling reads, count one /generate
    and no /v1 request (a loop back through a socket or BentoML's app counted both)."""
    def requests_of(endpoint: str) -> float:
        return scrape(server.url, "bentoml_service_request_total", endpoint=endpoint) or 0.0

    chat_before, generate_before = requests_of("/v1/chat/completions"), requests_of("/generate")
    log_before = server.log.read_text().count("path=/v1/chat/completions status=200")
    assert "".join(bento_client.generate(prompt="Say hi.", max_tokens=128)).strip()
    assert requests_of("/generate") - generate_before == 1
    assert requests_of("/v1/chat/completions") == chat_before
    deadline = time.monotonic() + 60  # the inner line is written as its task ends
    while True:
        inner = [line for line in server.log.read_text().split("\n")
                 if "path=/v1/chat/completions status=200" in line]
        if len(inner) > log_before or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(inner) == log_before + 1
    assert "loopback=1" in inner[-1]
