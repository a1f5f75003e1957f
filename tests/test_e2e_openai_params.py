"""The request parameters OpenAI users reach for, through the official SDK against the served
instance: usage in streams, ``n``, ``stop``, token limits, sampling and seeds, logprobs,
penalties, ``user``, and ``echo`` on text completions.

Greedy (``temperature=0``) requests are deterministic, so a parameter's effect is checked by
comparing against the same request without it.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam

from tests.conftest import MODEL

pytestmark = pytest.mark.e2e
STORY: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Tell me a short story about a lighthouse keeper."}]
PROMPT = "Once upon a time, in a small village by the sea,"


def chat(client: openai.OpenAI, **kwargs: Any) -> ChatCompletion:
    params: dict[str, Any] = {"model": MODEL, "messages": STORY, "max_tokens": 32,
                              "temperature": 0, **kwargs}
    reply: ChatCompletion = client.chat.completions.create(**params)
    return reply


def complete(client: openai.OpenAI, **kwargs: Any) -> Completion:
    params: dict[str, Any] = {"model": MODEL, "prompt": PROMPT, "max_tokens": 32,
                              "temperature": 0, **kwargs}
    reply: Completion = client.completions.create(**params)
    return reply


def chat_stream(client: openai.OpenAI, **kwargs: Any) -> list[ChatCompletionChunk]:
    params: dict[str, Any] = {"model": MODEL, "messages": STORY, "max_tokens": 32,
                              "temperature": 0, "stream": True, **kwargs}
    return list(client.chat.completions.create(**params))


def complete_stream(client: openai.OpenAI, **kwargs: Any) -> list[Completion]:
    params: dict[str, Any] = {"model": MODEL, "prompt": PROMPT, "max_tokens": 32,
                              "temperature": 0, "stream": True, **kwargs}
    return list(client.completions.create(**params))


def test_chat_stream_with_include_usage_ends_with_a_usage_chunk(
        openai_client: openai.OpenAI) -> None:
    whole = chat(openai_client)
    *body, last = chat_stream(openai_client, stream_options={"include_usage": True})
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None for c in body), "usage only in the final chunk"
    assert last.usage.model_dump() == whole.usage.model_dump()
    streamed = "".join(c.choices[0].delta.content or "" for c in body)
    assert streamed == whole.choices[0].message.content


def test_completion_stream_with_include_usage_ends_with_a_usage_chunk(
        openai_client: openai.OpenAI) -> None:
    whole = complete(openai_client)
    *body, last = complete_stream(openai_client, stream_options={"include_usage": True})
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == whole.usage.completion_tokens
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert "".join(c.choices[0].text for c in body) == whole.choices[0].text


def test_n_gives_n_sampled_choices(openai_client: openai.OpenAI) -> None:
    reply = chat(openai_client, n=3, temperature=1.0, seed=11, max_tokens=16)
    assert sorted(c.index for c in reply.choices) == [0, 1, 2]
    texts = [c.message.content for c in reply.choices]
    assert all(texts) and len(set(texts)) > 1, texts
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 3 * 16


def test_n_streams_every_choice(openai_client: openai.OpenAI) -> None:
    texts: dict[int, str] = {0: "", 1: ""}
    finished: dict[int, str] = {}
    for chunk in complete_stream(openai_client, max_tokens=8, temperature=1.0, seed=3, n=2):
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert all(texts.values()), texts
    assert set(finished) == {0, 1} and set(finished.values()) <= {"length", "stop"}


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_stop_sequence_ends_the_text_before_it(openai_client: openai.OpenAI, api: str) -> None:
    def text(reply: ChatCompletion | Completion) -> tuple[str, str | None]:
        choice = reply.choices[0]
        if isinstance(reply, ChatCompletion):
            return reply.choices[0].message.content or "", choice.finish_reason
        return reply.choices[0].text, choice.finish_reason

    ask = chat if api == "chat" else complete
    full, _ = text(ask(openai_client))
    stop = full.split()[4]  # a word from the middle of the greedy answer
    cut, finish = text(ask(openai_client, stop=[stop]))
    assert (cut, finish) == (full[:full.index(stop)], "stop")


def test_max_tokens_and_max_completion_tokens_bound_the_answer(
        openai_client: openai.OpenAI) -> None:
    for limit, expected in (({"max_tokens": 7}, 7),
                            ({"max_completion_tokens": 5, "max_tokens": openai.omit}, 5)):
        reply = chat(openai_client, **limit)
        assert reply.usage is not None and reply.usage.completion_tokens == expected
        assert reply.choices[0].finish_reason == "length"
    reply2 = complete(openai_client, max_tokens=6)
    assert reply2.usage is not None and reply2.usage.completion_tokens == 6


def test_same_seed_same_text_and_seeds_differ(openai_client: openai.OpenAI) -> None:
    sampled = {"temperature": 1.0, "top_p": 0.9, "max_tokens": 24}
    first = chat(openai_client, seed=1234, **sampled).choices[0].message.content
    assert chat(openai_client, seed=1234, **sampled).choices[0].message.content == first
    others = {chat(openai_client, seed=n, **sampled).choices[0].message.content for n in (1, 2, 3)}
    assert len(others | {first}) > 1, "different seeds all gave the same text"
    streamed = "".join(c.choices[0].delta.content or ""
                       for c in chat_stream(openai_client, seed=1234, **sampled))
    assert streamed == first, "a seeded stream should sample the same tokens"


def test_chat_logprobs_and_top_logprobs(openai_client: openai.OpenAI) -> None:
    reply = chat(openai_client, logprobs=True, top_logprobs=3, max_tokens=12)
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert reply.usage is not None and len(entries) == reply.usage.completion_tokens
    assert "".join(e.token for e in entries) == choice.message.content
    for entry in entries:
        top = entry.top_logprobs
        assert len(top) == 3 and [t.logprob for t in top] == sorted(
            (t.logprob for t in top), reverse=True)
        assert entry.logprob <= 0
        assert (entry.token, entry.logprob) == (top[0].token, top[0].logprob), "greedy picks top"


def test_completion_logprobs(openai_client: openai.OpenAI) -> None:
    reply = complete(openai_client, logprobs=2, max_tokens=6)
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.top_logprobs
    assert len(logprobs.tokens) == 6 and "".join(logprobs.tokens) == reply.choices[0].text
    for token, top in zip(logprobs.tokens, logprobs.top_logprobs, strict=True):
        assert len(top) == 2 and max(top, key=top.__getitem__) == token


def test_echo_returns_the_prompt_then_the_completion(openai_client: openai.OpenAI) -> None:
    plain = complete(openai_client, max_tokens=8).choices[0].text
    echoed = complete(openai_client, max_tokens=8, echo=True).choices[0].text
    assert echoed == PROMPT + plain


@pytest.mark.parametrize("penalty", ["frequency_penalty", "presence_penalty"])
def test_penalties_change_a_repetitive_answer(openai_client: openai.OpenAI, penalty: str) -> None:
    repeat: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "List the days of the week, then list them again."}]
    plain = chat(openai_client, messages=repeat, max_tokens=48).choices[0].message.content
    penalised = chat(openai_client, messages=repeat, max_tokens=48, **{penalty: 2.0})
    assert penalised.choices[0].message.content != plain


def test_user_field_is_accepted(openai_client: openai.OpenAI) -> None:
    with_user = chat(openai_client, user="user-1234", max_tokens=8)
    assert with_user.choices[0].message.content == chat(
        openai_client, max_tokens=8).choices[0].message.content
