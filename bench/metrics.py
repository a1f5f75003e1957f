"""Per-request timings and the numbers the report is made of, computed the way
``vllm bench serve`` computes them (``vllm.benchmarks.serve.calculate_metrics``), so the figures of
our own clients and of vLLM's client mean the same thing:

- TTFT: request sent to first streamed token; E2E: request sent to last token;
- TPOT: ``(E2E - TTFT) / (output tokens - 1)``, for requests with more than one token;
- output tokens/s and requests/s: totals over the wall time of the whole run (first request sent
  to last answer received), at a fixed maximum concurrency.

Every system's raw per-request timings go through this one module, vLLM's client's included.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RequestRecord:
    """One request as a client saw it; times in seconds."""

    ttft: float
    latency: float
    output_tokens: int
    prompt_tokens: int


@dataclass(frozen=True)
class RunMetrics:
    """One run: ``num_requests`` requests at ``concurrency`` in flight at most."""

    concurrency: int
    num_requests: int
    duration_s: float
    output_tok_s: float
    req_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    tpot_p50_ms: float
    e2e_p50_ms: float
    mean_output_tokens: float
    mean_prompt_tokens: float


# The metrics reported as median and spread over the repeats of one level.
REPEATED = ("output_tok_s", "req_s", "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "e2e_p50_ms")


def tpot(record: RequestRecord) -> float | None:
    """Time per output token after the first, or None for a one-token answer (as vLLM does)."""
    if record.output_tokens <= 1:
        return None
    return (record.latency - record.ttft) / (record.output_tokens - 1)


def percentile_ms(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile in ms, with numpy's default interpolation as in vLLM; 0 if empty."""
    return float(np.percentile(values, q)) * 1000 if values else 0.0


def summarize(records: Sequence[RequestRecord], duration_s: float, concurrency: int) -> RunMetrics:
    """The metrics of one run from its successful requests.

    Raises:
        ValueError: no request succeeded, or the duration is not positive.
    """
    if not records:
        raise ValueError("no successful request in this run")
    if duration_s <= 0:
        raise ValueError(f"run duration must be positive, got {duration_s}")
    tpots = [t for r in records if (t := tpot(r)) is not None]
    total_out = sum(r.output_tokens for r in records)
    return RunMetrics(
        concurrency=concurrency,
        num_requests=len(records),
        duration_s=duration_s,
        output_tok_s=total_out / duration_s,
        req_s=len(records) / duration_s,
        ttft_p50_ms=percentile_ms([r.ttft for r in records], 50),
        ttft_p99_ms=percentile_ms([r.ttft for r in records], 99),
        tpot_p50_ms=percentile_ms(tpots, 50),
        e2e_p50_ms=percentile_ms([r.latency for r in records], 50),
        mean_output_tokens=total_out / len(records),
        mean_prompt_tokens=statistics.fmean(r.prompt_tokens for r in records),
    )


@dataclass(frozen=True)
class Spread:
    """Median of the repeats, with their minimum and maximum."""

    median: float
    low: float
    high: float


def spread(values: Sequence[float]) -> Spread:
    """Median, min and max of ``values``.

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("no values to summarise")
    return Spread(statistics.median(values), min(values), max(values))


def over_repeats(runs: Sequence[RunMetrics]) -> dict[str, Spread]:
    """Each repeated metric's median and spread over ``runs`` (the repeats of one level)."""
    return {name: spread([getattr(run, name) for run in runs]) for name in REPEATED}
