"""Unit tests of ``make bench-layer``'s pieces that need no server: the stand-in for vLLM's
OpenAI app (through Starlette's TestClient), the client's answer checks, and the arithmetic from
requests to figures and ratios (made-up timings)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.testclient import TestClient

from bench.layer import standin
from bench.layer.load import MAX_TOKENS, chat_route, generate_route, read_answer
from bench.layer.summary import (
    DIRECT,
    SERVICE_CHAT,
    SERVICE_GENERATE,
    RunData,
    Sample,
    rounded,
    summarize,
    summarize_run,
)

CHAT = {"model": standin.MODEL_ID, "messages": [{"role": "user", "content": "hi"}]}


def sse_payloads(body: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, checking every frame's framing."""
    assert body.endswith("\n\n")
    frames = body[:-2].split("\n\n")
    assert all(f.startswith("data: ") for f in frames)
    return [f.removeprefix("data: ") for f in frames]


def streamed(client: TestClient, **extra: Any) -> tuple[str, list[str]]:
    response = client.post("/v1/chat/completions", json={**CHAT, "stream": True, **extra})
    assert response.status_code == 200
    return response.headers["content-type"], sse_payloads(response.text)


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(standin.app)


def test_stream_is_vllm_shaped_chunks_then_usage_then_done(client: TestClient) -> None:
    content_type, payloads = streamed(client, max_tokens=5,
                                      stream_options={"include_usage": True})
    assert content_type.startswith("text/event-stream")
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert all(c["model"] == standin.MODEL_ID and "id" in c and "created" in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    tokens = chunks[1:-1]
    assert len(tokens) == 5
    assert [c["choices"][0]["finish_reason"] for c in tokens] == [None] * 4 + ["length"]
    text = "".join(c["choices"][0]["delta"]["content"] for c in tokens)
    assert text == standin.answer_text(5)
    usage = chunks[-1]
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 5
    assert usage["usage"]["prompt_tokens"] == standin.PROMPT_TOKENS


def test_stream_defaults_to_128_tokens_and_no_usage(client: TestClient) -> None:
    _, payloads = streamed(client)
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert len(chunks) == 1 + standin.DEFAULT_MAX_TOKENS
    assert all("usage" not in c for c in chunks)


def test_non_streamed_answer_is_a_chat_completion(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 7})
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == standin.answer_text(7)
    assert body["usage"]["completion_tokens"] == 7


def test_models_lists_the_served_model(client: TestClient) -> None:
    assert client.get("/v1/models").json()["data"][0]["id"] == standin.MODEL_ID


def test_chat_check_accepts_the_whole_stream_only() -> None:
    body = b"".join(standin.stream_frames(MAX_TOKENS, True))
    check = chat_route("http://x").check
    assert check(body[-64:], body.count(b"\n\n"))
    assert not check(body[-64:], body.count(b"\n\n") - 1)  # a frame lost
    truncated = body[: -len(standin.DONE)]
    assert not check(truncated[-64:], truncated.count(b"\n\n"))


def test_frames_are_counted_when_a_terminator_is_split_across_reads() -> None:
    body = b"".join(standin.stream_frames(3, True))
    cut = body.index(b"\n\n") + 1  # between the two newlines of the first frame

    async def iter_any() -> AsyncIterator[bytes]:
        for part in (body[:cut], body[cut:-5], body[-5:]):
            yield part

    answer = SimpleNamespace(content=SimpleNamespace(iter_any=iter_any))
    read = asyncio.run(read_answer(answer, whole_body=False))
    assert read.frames == len(standin.stream_frames(3, True))
    assert read.kept == body[-64:]
    assert read.first_at is not None


def test_generate_check_wants_the_stand_ins_text() -> None:
    check = generate_route("http://x").check
    text = standin.answer_text(MAX_TOKENS).encode()
    assert check(text, 0)
    assert not check(text[:-1], 0)


def run(system: str, repeat: int, latencies: list[float], wall_s: float = 2.0,
        chunks: int = 100, server_cpu_s: float = 0.5) -> RunData:
    samples = [Sample(ttft=0.001, latency=t, chunks=chunks) for t in latencies]
    return RunData(system, repeat, wall_s, samples, Counter(), client_cpu_s=1.0,
                   server_cpu_s=server_cpu_s, machine_cpu_s=2.0)


def test_summarize_run_rates_and_per_chunk_times() -> None:
    r = run(DIRECT, 0, [0.01, 0.02, 0.03], wall_s=2.0)
    r.failures["HTTP 429"] += 2
    s = summarize_run(r)
    assert s["req_s"] == pytest.approx(1.5)
    assert s["chunks_s"] == pytest.approx(150)
    assert s["per_chunk_us_p50"] == pytest.approx(200)
    assert s["per_chunk_us_p90"] == pytest.approx(280)  # linear interpolation
    assert s["ttft_ms_p50"] == pytest.approx(1)
    assert s["server_cpu_us_per_chunk"] == pytest.approx(0.5 / 300 * 1e6)
    assert s["client_cpu_cores"] == pytest.approx(0.5)
    assert s["other_cpu_cores"] == pytest.approx(0.25)  # (2.0 - 1.0 - 0.5) / 2 s
    assert s["failures"] == {"HTTP 429": 2}


def test_summarize_run_refuses_a_run_without_successes() -> None:
    with pytest.raises(ValueError):
        summarize_run(run(DIRECT, 0, []))


def test_ratios_and_added_latency_come_from_medians_over_repeats() -> None:
    runs = []
    for repeat, wall in enumerate((1.0, 2.0, 4.0)):
        runs.append(run(DIRECT, repeat, [0.01], wall_s=wall / 2))  # 200/wall chunks/s
        runs.append(run(SERVICE_CHAT, repeat, [0.0105], wall_s=wall / 1.8, server_cpu_s=0.8))
        runs.append(run(SERVICE_GENERATE, repeat, [0.012], wall_s=wall / 1.5))
    result = summarize(runs)
    direct = result["systems"][DIRECT]
    assert direct["chunks_s"] == pytest.approx(100)  # median of 200, 100, 50
    assert direct["chunks_s_by_repeat"] == pytest.approx([200, 100, 50])
    assert direct["requests"] == 3
    ratio = result["ratios"]
    assert ratio["service_chat_vs_direct_chunks_s"] == pytest.approx(0.9)
    assert ratio["service_generate_vs_service_chat_chunks_s"] == pytest.approx(1.5 / 1.8)
    assert ratio["service_chat_vs_direct_by_repeat"] == pytest.approx([0.9] * 3)
    assert ratio["service_chat_added_us_per_chunk"] == pytest.approx(5)
    assert ratio["service_generate_added_us_per_chunk"] == pytest.approx(20)
    assert ratio["service_chat_added_cpu_us_per_chunk"] == pytest.approx(3000)  # 0.3 s/100


def test_target_wants_the_ratio_and_the_added_time() -> None:
    met = [run(DIRECT, 0, [0.01]), run(SERVICE_CHAT, 0, [0.0104]),
           run(SERVICE_GENERATE, 0, [0.02])]
    assert summarize(met)["target"]["met"]
    slow = [run(DIRECT, 0, [0.01]), run(SERVICE_CHAT, 0, [0.01], wall_s=2.5),
            run(SERVICE_GENERATE, 0, [0.01])]
    assert not summarize(slow)["target"]["chunks_s_ratio_met"]
    late = [run(DIRECT, 0, [0.01]), run(SERVICE_CHAT, 0, [0.016]),
            run(SERVICE_GENERATE, 0, [0.01])]
    target = summarize(late)["target"]
    assert target["chunks_s_ratio_met"] and not target["added_us_met"] and not target["met"]


def test_rounded_keeps_four_significant_digits() -> None:
    assert rounded({"a": [41234.567, 0.000123456], "b": 3, "c": "x"}) == {
        "a": [41230.0, 0.0001235], "b": 3, "c": "x"}
