"""``python -m bench.gpu_report RESULT``: the page and chart of a GPU benchmark result
(``bench.gpu``): ``docs/benchmarks-gpu.md`` and ``docs/benchmarks-gpu.png``.

Every figure is the median over the repeats with its range; ratios are service / raw (or
``/generate`` / chat with EOS honoured), computed from those medians, and checked against the
targets of the project's GPU issues.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOK_S_MIN = 0.97  # service chat output tok/s against raw, at every level
TTFT_MAX = 1.10  # service chat TTFT p50 against raw
GENERATE_MIN = 0.95  # /generate against service chat (EOS honoured by both)
FLOOR_FRACTION_MIN = 0.80  # batch-1 decode against the memory-bandwidth floor


@dataclass(frozen=True)
class Check:
    name: str
    level: str
    ratio: float
    bound: float
    at_least: bool

    @property
    def met(self) -> bool:
        return self.ratio >= self.bound if self.at_least else self.ratio <= self.bound


def summary(result: dict[str, Any], model: str, kind: str, system: str) -> dict[str, Any]:
    return result["models"][model][kind]["systems"][system]


def median(entry: dict[str, Any], metric: str) -> float:
    return float(entry["summary"][metric]["median"])


def cell(entry: dict[str, Any], metric: str, digits: int = 0) -> str:
    s = entry["summary"][metric]
    return f"{s['median']:.{digits}f} ({s['low']:.{digits}f}-{s['high']:.{digits}f})"


def repeats(result: dict[str, Any]) -> str:
    """Repeats per level: one number, or per model where side-by-side runs were merged."""
    per_model = {m: e.get("repeats", result["repeats"]) for m, e in result["models"].items()}
    if len(set(per_model.values())) > 1:
        return ", ".join(f"{m} {n}" for m, n in per_model.items())
    return str(result["repeats"])


def checks(result: dict[str, Any]) -> list[Check]:
    found = []
    for model in result["models"]:
        raw = summary(result, model, "raw", "raw-chat")
        svc = summary(result, model, "service", "service-chat")
        for level in raw:
            found.append(Check(f"{model} chat tok/s vs raw", level,
                               median(svc[level], "output_tok_s") /
                               median(raw[level], "output_tok_s"), TOK_S_MIN, True))
            found.append(Check(f"{model} chat TTFT p50 vs raw", level,
                               median(svc[level], "ttft_p50_ms") /
                               median(raw[level], "ttft_p50_ms"), TTFT_MAX, False))
            refused = sum(r["refused_429"] for r in svc[level]["runs"])
            found.append(Check(f"{model} chat requests refused (429)", level, refused, 0, False))
        systems = result["models"][model]["service"]["systems"]
        if "service-generate" in systems:
            gen, eos = systems["service-generate"], systems["service-chat-eos"]
            for level in gen:
                found.append(Check(f"{model} /generate tok/s vs chat (EOS)", level,
                                   median(gen[level], "output_tok_s") /
                                   median(eos[level], "output_tok_s"), GENERATE_MIN, True))
        if "tpot_floor_ms" in result["models"][model]:
            floor = result["models"][model]["tpot_floor_ms"]
            found.append(Check(f"{model} batch-1 decode vs bandwidth floor", "1",
                               floor / median(raw["1"], "tpot_p50_ms"), FLOOR_FRACTION_MIN, True))
    return found


def table(result: dict[str, Any], model: str) -> list[str]:
    lines = ["| system | concurrency | output tok/s | TTFT p50 ms | TPOT p50 ms | failed | "
             "429 |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for kind in ("raw", "service"):
        for system, levels in result["models"][model][kind]["systems"].items():
            for level, entry in levels.items():
                failed = sum(r["failures"] for r in entry["runs"])
                refused = sum(r["refused_429"] for r in entry["runs"])
                lines.append(f"| {system} | {level} | {cell(entry, 'output_tok_s')} | "
                             f"{cell(entry, 'ttft_p50_ms', 1)} | "
                             f"{cell(entry, 'tpot_p50_ms', 2)} | {failed} | {refused} |")
    return lines


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(result["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for kind in ("raw", "service"):
            for system, levels in result["models"][model][kind]["systems"].items():
                xs = [int(level) for level in levels]
                ax.plot(xs, [median(e, "output_tok_s") for e in levels.values()], marker="o",
                        label=system)
        ax.set_xscale("log", base=4)
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel("output tokens/s (median)")
        ax.set_title(f"{model} on {result['gpu'].split(',')[0]}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def page(result: dict[str, Any], source: str, notes: str) -> str:
    m = result["machine"]
    gpus = result["gpu"].splitlines()
    lines = [
        "# GPU benchmark: this service against raw `vllm serve`", "",
        f"Result file: `{source}` (`python -m bench.gpu_report {source}` writes this page). "
        f"Host: {gpus[0]} (x{len(gpus)}), {m['cores']} cores; "
        f"vLLM {m['versions'].get('vllm', '?')}, "
        f"BentoML {m['versions'].get('bentoml', '?')}, torch {m['versions'].get('torch', '?')};"
        f" project commit {m['commit']}; {m['date_utc']}.", "",
        f"Workload: `vllm bench serve`, random prompts of {result['workload']['input_len']} "
        f"tokens, answers of {result['workload']['output_len']} (EOS ignored), greedy; "
        f"repeats per level: {repeats(result)}; prompts per run {result['prompts']}. "
        "Figures are medians with the range over the repeats.", "",
        notes, "", "![output tokens/s by concurrency](benchmarks-gpu.png)", "",
        "## Targets", "", "| check | concurrency | measured | target | met |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for c in checks(result):
        sign = ">=" if c.at_least else "<="
        lines.append(f"| {c.name} | {c.level} | {c.ratio:.2f} | {sign} {c.bound} | "
                     f"{'yes' if c.met else '**no**'} |")
    for model, entry in result["models"].items():
        lines += ["", f"## {model}", ""]
        if "weight_bytes" in entry:
            lines.append(f"{entry['params'] / 1e9:.2f}B parameters, "
                         f"{entry['weight_bytes'] / 1e9:.2f} GB of fp16 weights; measured copy "
                         f"bandwidth {result['membw_gbs']:.0f} GB/s gives a batch-1 decode "
                         f"floor of {entry['tpot_floor_ms']:.2f} ms per token.")
            lines.append("")
        for kind in ("raw", "service"):
            run = entry[kind]
            if "error" in run:
                lines.append(f"- {kind}: failed: {run['error']}")
                continue
            caches = "compile caches cleared" if run.get("cold_caches") else "caches as left"
            warm = (f", {run['warm_ready_s']:.0f} s warm" if run.get("warm_ready_s") is not None
                    else "")
            lines.append(f"- {kind}: ready in {run['ready_s']:.0f} s ({caches}){warm}, peak GPU "
                         "memory "
                         f"{run['peak_gpu_mib'] / 1024:.1f} GiB (see notes), exit code "
                         f"{run['exit_code']}")
        lines += ["", *table(result, model)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_report", description=__doc__)
    parser.add_argument("result", type=Path)
    parser.add_argument("--notes", type=Path, help="Markdown placed above the tables")
    args = parser.parse_args()
    result = json.loads(args.result.read_text())
    notes = args.notes.read_text() if args.notes else ""
    source = str(args.result.resolve().relative_to(ROOT))
    (ROOT / "docs" / "benchmarks-gpu.md").write_text(page(result, source, notes))
    chart(result, ROOT / "docs" / "benchmarks-gpu.png")
    for c in checks(result):
        print(f"{'MET ' if c.met else 'MISS'} {c.name} [{c.level}]: {c.ratio:.2f}")


if __name__ == "__main__":
    main()
