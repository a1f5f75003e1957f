"""The arithmetic of ``make bench-layer``: requests of one run to its figures, repeats to their
median, the three systems to the ratios the issue asks about. Pure functions, no I/O.

Per-chunk time is a request's whole latency divided by the chunks (tokens) it carried: at a fixed
number of closed-loop clients it is what one stream waits per token, and its difference between
the service and the bare stand-in is what the service's layer adds to every token.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DIRECT = "direct_chat"
SERVICE_CHAT = "service_chat"
SERVICE_GENERATE = "service_generate"
SYSTEMS = (DIRECT, SERVICE_CHAT, SERVICE_GENERATE)

# The target: the service path at >= 0.90x the bare stand-in's chunks/s at 64 concurrent
# streams, and under 50 µs added per chunk.
TARGET_CHUNKS_RATIO = 0.90
TARGET_ADDED_US = 50.0


@dataclass(frozen=True)
class Sample:
    """One complete request as the client saw it; times in seconds from when it was sent."""

    ttft: float
    latency: float
    chunks: int


@dataclass
class RunData:
    """What one timed run of one system produced."""

    system: str
    repeat: int
    wall_s: float
    samples: list[Sample]
    failures: Counter[str] = field(default_factory=Counter)
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    machine_cpu_s: float = 0.0  # all processes; what is neither client nor server disturbs


def percentile(values: Sequence[float], q: float) -> float:
    """numpy's linear-interpolation percentile, as ``bench.metrics`` and vLLM compute them."""
    return float(np.percentile(np.asarray(values, dtype=float), q))


def summarize_run(run: RunData) -> dict[str, Any]:
    """One run's figures. Rates are over the run's wall time (first request sent to last
    answer received); CPU is in cores (CPU-seconds per second) and in µs per chunk."""
    if not run.samples:
        raise ValueError(f"{run.system} (repeat {run.repeat}): no request succeeded")
    chunks = sum(s.chunks for s in run.samples)
    per_chunk_us = [s.latency / s.chunks * 1e6 for s in run.samples]
    return {
        "system": run.system,
        "repeat": run.repeat,
        "wall_s": run.wall_s,
        "requests": len(run.samples),
        "req_s": len(run.samples) / run.wall_s,
        "chunks_s": chunks / run.wall_s,
        "per_chunk_us_p50": percentile(per_chunk_us, 50),
        "per_chunk_us_p90": percentile(per_chunk_us, 90),
        "ttft_ms_p50": percentile([s.ttft * 1e3 for s in run.samples], 50),
        "failures": dict(run.failures),
        "client_cpu_cores": run.client_cpu_s / run.wall_s,
        "server_cpu_cores": run.server_cpu_s / run.wall_s,
        "server_cpu_us_per_chunk": run.server_cpu_s / chunks * 1e6,
        "other_cpu_cores": max(0.0, run.machine_cpu_s - run.client_cpu_s - run.server_cpu_s)
        / run.wall_s,
    }


MEDIAN_OF_REPEATS = ("req_s", "chunks_s", "per_chunk_us_p50", "per_chunk_us_p90", "ttft_ms_p50",
                     "client_cpu_cores", "server_cpu_cores", "server_cpu_us_per_chunk",
                     "other_cpu_cores")


def over_repeats(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One system's runs: the median of each figure, chunks/s of every repeat (the spread), the
    requests and failures of all of them."""
    failures: Counter[str] = Counter()
    for run in runs:
        failures.update(run["failures"])
    combined: dict[str, Any] = {k: statistics.median(r[k] for r in runs)
                                for k in MEDIAN_OF_REPEATS}
    combined["chunks_s_by_repeat"] = [r["chunks_s"] for r in runs]
    combined["requests"] = sum(r["requests"] for r in runs)
    combined["failures"] = dict(failures)
    return combined


def paired(runs: Sequence[Mapping[str, Any]], over: str, under: str) -> list[float]:
    """chunks/s of ``over`` / ``under`` in each repeat (both measured in the same round)."""
    by_repeat = {(r["system"], r["repeat"]): r["chunks_s"] for r in runs}
    repeats = sorted({r["repeat"] for r in runs})
    return [by_repeat[over, k] / by_repeat[under, k] for k in repeats
            if (over, k) in by_repeat and (under, k) in by_repeat]


def ratios(systems: Mapping[str, Mapping[str, Any]],
           runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The comparisons, from the medians over repeats (and per repeat, for the spread)."""
    direct, chat, generate = (systems[s] for s in SYSTEMS)
    return {
        "service_chat_vs_direct_chunks_s": chat["chunks_s"] / direct["chunks_s"],
        "service_generate_vs_service_chat_chunks_s": generate["chunks_s"] / chat["chunks_s"],
        "service_generate_vs_direct_chunks_s": generate["chunks_s"] / direct["chunks_s"],
        "service_chat_added_us_per_chunk":
            chat["per_chunk_us_p50"] - direct["per_chunk_us_p50"],
        "service_generate_added_us_per_chunk":
            generate["per_chunk_us_p50"] - direct["per_chunk_us_p50"],
        # The server's own CPU per chunk does not depend on how the cores were shared.
        "service_chat_added_cpu_us_per_chunk":
            chat["server_cpu_us_per_chunk"] - direct["server_cpu_us_per_chunk"],
        "service_generate_added_cpu_us_per_chunk":
            generate["server_cpu_us_per_chunk"] - direct["server_cpu_us_per_chunk"],
        "service_chat_vs_direct_by_repeat": paired(runs, SERVICE_CHAT, DIRECT),
        "service_generate_vs_service_chat_by_repeat": paired(runs, SERVICE_GENERATE,
                                                             SERVICE_CHAT),
    }


def target(ratio: Mapping[str, Any]) -> dict[str, Any]:
    """Whether the service's chat path meets the issue's target."""
    chunks_ok = ratio["service_chat_vs_direct_chunks_s"] >= TARGET_CHUNKS_RATIO
    added_ok = ratio["service_chat_added_us_per_chunk"] < TARGET_ADDED_US
    return {"chunks_s_ratio_min": TARGET_CHUNKS_RATIO, "added_us_per_chunk_max": TARGET_ADDED_US,
            "chunks_s_ratio_met": chunks_ok, "added_us_met": added_ok,
            "met": chunks_ok and added_ok}


def summarize(runs: Sequence[RunData]) -> dict[str, Any]:
    """Every run's figures, each system's median over repeats, the ratios and the target."""
    per_run = [summarize_run(r) for r in runs]
    systems = {s: over_repeats([r for r in per_run if r["system"] == s]) for s in SYSTEMS}
    ratio = ratios(systems, per_run)
    return {"systems": systems, "ratios": ratio, "target": target(ratio), "runs": per_run}


def rounded(value: Any) -> Any:
    """``value`` with its floats cut to what the measurement can tell: 4 significant digits."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v) for v in value]
    return value
