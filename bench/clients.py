"""The load generators, one per kind of route, all timing requests the same way.

- ``vllm_bench_serve``: vLLM's own ``vllm bench serve`` (``vllm.benchmarks.serve``), for every
  OpenAI route. It runs in this process through the same parser and ``main_async`` the ``vllm``
  command calls, which saves its ~15 s import per run; ``argv`` is the exact command line.
- ``generate_run``: our client for ``/generate``, a copy of vLLM's request loop (aiohttp, one
  session, a semaphore of ``concurrency``, all requests queued at once, the clock per request
  starting when it is sent) reading BentoML's streamed text instead of OpenAI's SSE.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.metrics import RequestRecord
from bench.workload import Workload, chat_prompt_tokens, count_tokens


@dataclass
class RunResult:
    """The successful requests of one run, its wall time, and what failed."""

    records: list[RequestRecord]
    duration_s: float
    failures: list[str] = field(default_factory=list)
    client: dict[str, Any] = field(default_factory=dict)


def vllm_bench_argv(base_url: str, model_id: str, tokenizer: str, workload: Workload,
                    concurrency: int, num_prompts: int, seed: int, result_file: Path,
                    ignore_eos: bool = True) -> list[str]:
    """``vllm bench serve`` arguments: chat completions, streaming, fixed prompt length, answers
    of ``output_len`` tokens (at most, when EOS is not ignored), greedy like ``/generate``."""
    return [
        "--backend", "openai-chat", "--base-url", base_url, "--endpoint", "/v1/chat/completions",
        "--model", model_id, "--tokenizer", tokenizer,
        "--dataset-name", "random", "--random-input-len", str(workload.input_len),
        "--random-output-len", str(workload.output_len), "--random-range-ratio", "0",
        *(["--ignore-eos"] if ignore_eos else []), "--temperature", "0",
        "--max-concurrency", str(concurrency), "--num-prompts", str(num_prompts),
        "--seed", str(seed), "--disable-tqdm",
        "--save-result", "--save-detailed",
        "--result-dir", str(result_file.parent), "--result-filename", result_file.name,
    ]


def vllm_bench_serve(argv: list[str], log: Path) -> RunResult:
    """Run ``vllm bench serve argv`` and read its per-request timings back from its result file.

    Raises:
        SystemExit: an argument was refused by vLLM's parser.
    """
    from vllm.benchmarks.serve import add_cli_args, main_async
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    args = parser.parse_args(argv)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        asyncio.run(main_async(args))
    result_file = Path(args.result_dir) / args.result_filename
    return from_vllm_result(json.loads(result_file.read_text()))


def from_vllm_result(result: dict[str, Any]) -> RunResult:
    """Per-request records from a ``vllm bench serve --save-detailed`` result."""
    records, failures = [], []
    rows = zip(result["ttfts"], result["latencies"], result["output_lens"],
               result["input_lens"], result["errors"], strict=True)
    for ttft, latency, out_len, in_len, error in rows:
        if error:
            failures.append(str(error)[-500:])
        else:
            records.append(RequestRecord(ttft, latency, int(out_len), int(in_len)))
    client = {k: result[k] for k in ("output_throughput", "request_throughput", "median_ttft_ms",
                                     "median_tpot_ms", "completed", "failed") if k in result}
    return RunResult(records, float(result["duration"]), failures, {"vllm_summary": client})


@dataclass
class _Outcome:
    start: float
    ttft: float | None = None
    latency: float = 0.0
    body: bytes = b""
    error: str | None = None


async def _generate_one(session: aiohttp.ClientSession, url: str, prompt: str,
                        max_tokens: int) -> _Outcome:
    outcome = _Outcome(start=time.perf_counter())
    chunks: list[bytes] = []
    try:
        async with session.post(url, json={"prompt": prompt, "max_tokens": max_tokens}) as resp:
            if resp.status != 200:
                outcome.error = f"HTTP {resp.status}: {(await resp.text())[:300]}"
                return outcome
            async for chunk in resp.content.iter_any():
                if not chunk:
                    continue
                now = time.perf_counter()
                if outcome.ttft is None:
                    outcome.ttft = now - outcome.start
                outcome.latency = now - outcome.start
                chunks.append(chunk)
    except aiohttp.ClientError as exc:  # includes a stream cut off before its last chunk
        outcome.error = f"{type(exc).__name__}: {exc}"
        return outcome
    outcome.body = b"".join(chunks)
    if outcome.ttft is None:
        outcome.error = "empty answer"
    return outcome


async def _generate_all(url: str, prompts: list[str], max_tokens: int,
                        concurrency: int) -> tuple[list[_Outcome], float]:
    # The same connection pool and timeout as vLLM's client.
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency,
                                     keepalive_timeout=60, force_close=False)
    timeout = aiohttp.ClientTimeout(total=6 * 60 * 60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        semaphore = asyncio.Semaphore(concurrency)

        async def limited(prompt: str) -> _Outcome:
            async with semaphore:
                return await _generate_one(session, url, prompt, max_tokens)

        start = time.perf_counter()
        outcomes = await asyncio.gather(*(limited(p) for p in prompts))
        return list(outcomes), time.perf_counter() - start


def generate_run(base_url: str, prompts: list[str], workload: Workload,
                 concurrency: int) -> RunResult:
    """``prompts`` to ``/generate`` with at most ``concurrency`` in flight. ``/generate`` has no
    ``ignore_eos``: an answer may end before ``output_len``, and its tokens are counted as they
    came (re-tokenised after the run, as vLLM's client does when a server sends no usage)."""
    outcomes, duration = asyncio.run(
        _generate_all(f"{base_url}/generate", prompts, workload.output_len, concurrency))
    records, failures = [], []
    for prompt, o in zip(prompts, outcomes, strict=True):
        if o.error is not None or o.ttft is None:
            failures.append(o.error or "no token")
            continue
        tokens = count_tokens(o.body.decode("utf-8", errors="replace"))
        records.append(RequestRecord(o.ttft, o.latency, tokens, chat_prompt_tokens(prompt)))
    return RunResult(records, duration, failures, {"client": "bench.clients.generate_run"})
