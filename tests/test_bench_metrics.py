"""Unit tests of the benchmark's arithmetic: per-request timings to reported metrics, repeats to
median and spread, runs to the issue's target ratios. No server: made-up timings."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pytest

from bench.clients import from_vllm_result
from bench.membw import decode_floor_tok_s, kernel_bytes
from bench.metrics import RequestRecord, RunMetrics, over_repeats, spread, summarize, tpot
from bench.profile import parse_samples
from bench.report import paired_ratios, summarize_runs, targets


def record(ttft: float, latency: float, tokens: int = 11) -> RequestRecord:
    return RequestRecord(ttft=ttft, latency=latency, output_tokens=tokens, prompt_tokens=94)


def test_tpot_excludes_the_first_token_as_vllm_does() -> None:
    assert tpot(record(0.5, 1.5, tokens=11)) == pytest.approx(0.1)
    assert tpot(record(0.5, 0.5, tokens=1)) is None


def test_summarize_counts_tokens_over_the_run_wall_time() -> None:
    runs = [record(0.1, 1.1), record(0.3, 2.3), record(0.2, 1.2)]
    m = summarize(runs, duration_s=3.0, concurrency=2)
    assert m.output_tok_s == pytest.approx(33 / 3.0)
    assert m.req_s == pytest.approx(1.0)
    assert m.ttft_p50_ms == pytest.approx(200)
    assert m.ttft_p99_ms == pytest.approx(298)  # numpy's linear interpolation, as vLLM
    assert m.tpot_p50_ms == pytest.approx(100)
    assert m.e2e_p50_ms == pytest.approx(1200)
    assert m.mean_output_tokens == 11


def test_summarize_refuses_a_run_without_successes() -> None:
    with pytest.raises(ValueError):
        summarize([], duration_s=1.0, concurrency=1)


def test_spread_is_median_min_max() -> None:
    s = spread([3.0, 1.0, 2.0])
    assert (s.median, s.low, s.high) == (2.0, 1.0, 3.0)


def metrics(tok_s: float, ttft_ms: float = 100.0, tpot_ms: float = 50.0, c: int = 1) -> RunMetrics:
    return RunMetrics(concurrency=c, num_requests=4, duration_s=10.0, output_tok_s=tok_s,
                      req_s=tok_s / 128, ttft_p50_ms=ttft_ms, ttft_p99_ms=ttft_ms,
                      tpot_p50_ms=tpot_ms, e2e_p50_ms=1000.0, mean_output_tokens=128,
                      mean_prompt_tokens=94)


def test_over_repeats_takes_each_metric_median() -> None:
    out = over_repeats([metrics(10), metrics(30), metrics(20)])
    assert out["output_tok_s"].median == 20
    assert out["ttft_p50_ms"].median == 100


def run(system: str, c: int, repeat: int, tok_s: float, ttft_ms: float = 100.0,
        tpot_ms: float = 50.0) -> dict[str, Any]:
    return {"system": system, "concurrency": c, "repeat": repeat,
            "metrics": asdict(metrics(tok_s, ttft_ms, tpot_ms, c)),
            "records": [{"ttft": ttft_ms / 1000}] * 3}


def test_paired_ratios_pair_runs_of_the_same_repeat() -> None:
    runs = [run("a", 1, 0, 10), run("b", 1, 0, 20), run("a", 1, 1, 30), run("b", 1, 1, 30)]
    assert sorted(paired_ratios(runs, "a", "b", 1, "output_tok_s")) == [0.5, 1.0]


def test_targets_compare_service_with_raw_and_transformers() -> None:
    runs = [run("raw-chat", 32, 0, 100, ttft_ms=100), run("service-chat", 32, 0, 98, ttft_ms=120),
            run("service-chat-eos", 32, 0, 90), run("service-generate", 32, 0, 80),
            run("transformers", 32, 0, 20)]
    result = {"runs": runs, "plan": {"levels": [32]}}
    found = {t.name: t for t in targets(result, summarize_runs(runs))}
    assert found["service chat / raw vLLM, output tok/s"].ratio == pytest.approx(0.98)
    assert found["service chat / raw vLLM, output tok/s"].met
    assert not found["service chat / raw vLLM, TTFT p50"].met  # 1.2 > 1.10
    generate = [t for name, t in found.items() if name.startswith("/generate")]
    assert generate[0].ratio == pytest.approx(80 / 90) and not generate[0].met
    assert found["service chat / transformers, output tok/s"].ratio == pytest.approx(4.9)


def test_ttft_target_pools_every_request_of_every_repeat() -> None:
    # Repeat 0's raw run had one slow first token: its own median moves, the pooled one barely.
    slow = run("raw-chat", 1, 0, 10, ttft_ms=100)
    slow["records"] = [{"ttft": 0.1}, {"ttft": 0.5}]
    runs = [slow, run("service-chat", 1, 0, 10, ttft_ms=105),
            run("raw-chat", 1, 1, 10, ttft_ms=100), run("service-chat", 1, 1, 10, ttft_ms=105)]
    result = {"runs": runs, "plan": {"levels": [1]}}
    ttft = next(t for t in targets(result, summarize_runs(runs)) if "TTFT" in t.name)
    assert ttft.ratio == pytest.approx(1.05) and ttft.met
    assert "over 6 / 5 requests" in ttft.detail


def test_profile_samples_go_to_the_innermost_process_and_first_category() -> None:
    root, worker = 'process 1:"circusd"', 'process 3:"VLLM::Worker"'
    text = "\n".join([
        f"{root};process 2:\"python -m _bentoml_impl.worker\";run (uvicorn/server.py:1);"
        "send (starlette/responses.py:2) 3",
        f"{root};{worker};execute_model (vllm/v1/worker/gpu_model_runner.py:1);"
        "forward (vllm/model_executor/models/llama.py:2);onednn_mm (vllm/_custom_ops.py:3);"
        "__call__ (torch/_ops.py:4) 5",
        f"{root};{worker};dequeue (vllm/distributed/device_communicators/shm_broadcast.py:9) 2",
        f"{root};{worker};execute_model (vllm/v1/worker/gpu_model_runner.py:1) 1",
        f"{root};process 4:\"VLLM::EngineCore\";step (vllm/v1/core/sched/scheduler.py:1) 4",
    ])
    counts = parse_samples(text)
    assert counts["front end"] == {"HTTP server, middleware": 3}
    assert counts["worker"] == {"matmul (oneDNN)": 5, "waiting for the other process": 2,
                                "model runner": 1}
    assert counts["engine core"] == {"scheduler": 4}


def test_decode_floor_target_uses_batch_one_tpot() -> None:
    runs = [run("raw-chat", 1, 0, 10, tpot_ms=50.0), run("service-chat", 1, 0, 10, tpot_ms=50.0)]
    result = {"runs": runs, "plan": {"levels": [1]},
              "bandwidth_gb_s": {"read_1t": 10.0, "read_all": 20.0, "threads": 2},
              "weights": {"bytes_per_token": 250_000_000}}
    floor = [t for t in targets(result, summarize_runs(runs)) if "raw-chat" in t.name]
    assert [round(t.ratio, 2) for t in floor] == [0.5, 0.25]  # 20 tok/s of 40, then of 80


def test_decode_floor_and_copy_bytes() -> None:
    assert decode_floor_tok_s(10.0, 250_000_000) == pytest.approx(40.0)
    assert kernel_bytes("copy", 100) == 200 and kernel_bytes("read", 100) == 100


def test_vllm_result_failures_are_kept_apart() -> None:
    result = {"ttfts": [0.1, 0.0], "latencies": [1.0, 0.0], "output_lens": [128, 0],
              "input_lens": [94, 94], "errors": ["", "boom"], "duration": 2.0}
    out = from_vllm_result(result)
    assert [r.output_tokens for r in out.records] == [128]
    assert out.failures == ["boom"] and out.duration_s == 2.0


def test_gemv_shapes_cover_every_matrix_of_smollm2() -> None:
    from bench.gemv import weight_shapes

    config = {"hidden_size": 576, "num_attention_heads": 9, "head_dim": 64,
              "num_key_value_heads": 3, "intermediate_size": 1536, "num_hidden_layers": 30,
              "vocab_size": 49152}
    shapes = weight_shapes(config)
    assert shapes[:4] == [(960, 576), (576, 576), (3072, 576), (576, 1536)]
    # The checkpoint's 134,515,008 parameters less its 61 RMSNorm vectors of 576.
    assert sum(n * k for n, k in shapes) == 134_515_008 - 61 * 576
