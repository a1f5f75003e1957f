"""The README's benchmark summary says what the committed run measured: every ratio in its table
is recomputed from ``bench/results/full.json`` by the report's own code."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from bench.report import summarize_runs, targets
from tests.readme import README

RESULT = Path(__file__).resolve().parent.parent / "bench" / "results" / "full.json"


def readme_rows() -> dict[str, list[float | None]]:
    """The ratio table under "## Benchmarks": label → values at c=1, 8, 32 (None: blank)."""
    section = README.read_text().split("## Benchmarks", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"[\d.]+", cells[1]):
            rows[cells[0]] = [float(c) if c else None for c in cells[1:4]]
    return rows


def measured(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Target name → level → ratio, plus service/transformers at every level."""
    summary = summarize_runs(result["runs"])
    out: dict[str, dict[str, float]] = {}
    for t in targets(result, summary):
        out.setdefault(t.name, {})[t.level] = t.ratio
    out["transformers"] = {
        f"c={c}": summary["service-chat"][c]["output_tok_s"].median
        / summary["transformers"][c]["output_tok_s"].median for c in summary["transformers"]}
    return out


ROWS = {  # README label → (target name, or "transformers")
    "service chat / raw `vllm serve`, output tok/s": "service chat / raw vLLM, output tok/s",
    "service chat / raw `vllm serve`, TTFT p50": "service chat / raw vLLM, TTFT p50",
    "`/generate` / service chat (same requests), output tok/s":
        "/generate / service chat (same requests, EOS as /generate), output tok/s",
    "service chat / transformers, output tok/s": "transformers",
}


def test_readme_benchmark_ratios_are_the_committed_runs() -> None:
    result = json.loads(RESULT.read_text())
    ratios, rows = measured(result), readme_rows()
    for label, name in ROWS.items():
        for level, value in zip(("c=1", "c=8", "c=32"), rows[label], strict=True):
            assert value == pytest.approx(ratios[name][level], abs=0.005), (label, level)
    decode = ratios["batch-1 decode / bandwidth floor (service-chat)"]["one core"]
    assert rows["batch-1 decode / one-core bandwidth floor"][0] == pytest.approx(decode, abs=0.005)


GPU_RESULT = RESULT.parent / "gpu-h200.json"
GPU_ROWS = {  # README label → the GPU report's check name
    "8B-class, output tok/s": "llama8b chat tok/s vs raw",
    "8B-class, TTFT p50": "llama8b chat TTFT p50 vs raw",
    "SmolLM2, output tok/s": "smollm2 chat tok/s vs raw",
}


def test_readme_gpu_ratios_are_the_committed_gpu_run() -> None:
    from bench.gpu_report import checks

    section = README.read_text().split("### On a GPU", 1)[1].split("\n### ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and re.fullmatch(r"[\d.]+", cells[1]):
            rows[cells[0]] = [float(c) for c in cells[1:6]]
    result = json.loads(GPU_RESULT.read_text())
    found = {(c.name, c.level): c.ratio for c in checks(result)}
    for label, name in GPU_ROWS.items():
        for level, value in zip(("1", "16", "64", "256", "1024"), rows[label], strict=True):
            assert value == pytest.approx(found[(name, level)], abs=0.005), (label, level)
    refused = [found[(f"{m} chat requests refused (429)", lv)]
               for m in ("llama8b", "smollm2") for lv in ("1", "16", "64", "256", "1024")]
    assert rows["requests refused (429), both models"] == [0] * 5 and not any(refused)
