"""The load generators, one per kind of route, all timing requests the same way.

- ``vllm_bench_serve``: vLLM's own ``vllm bench serve`` (``vllm.benchmarks.serve``), for every
  OpenAI route. It runs in this process through the same parser and ``main_async`` the ``vllm``
  command calls, which saves its ~15 s import per run; ``argv`` is the exact command line.
- ``generate_run``: our client for ``/generate``, a copy of vLLM's request loop (aiohttp, one
  session, a semaphore of ``concurrency``, all requests queued at once, the clock per request
  starting when it is sent) reading BentoML's streamed text instead of OpenAI's SSE.
- ``chat_run``: the same loop sending the same requests to ``/v1/chat/completions`` through
  vLLM's own request function: what ``/generate`` is compared with. (``vllm bench serve``
  itself cannot send them: on its random dataset it always sets ``ignore_eos``, and
  ``/generate`` has no such option, so its answers stop at EOS.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
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
                    concurrency: int, num_prompts: int, seed: int, result_file: Path) -> list[str]:
    """``vllm bench serve`` arguments: chat completions, streaming, fixed lengths, EOS ignored,
    greedy like ``/generate``."""
    return [
        "--backend", "openai-chat", "--base-url", base_url, "--endpoint", "/v1/chat/completions",
        "--model", model_id, "--tokenizer", tokenizer,
        "--dataset-name", "random", "--random-input-len", str(workload.input_len),
        "--random-output-len", str(workload.output_len), "--random-range-ratio", "0",
        "--ignore-eos", "--temperature", "0",
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
class Outcome:
    """One request: when it was sent (perf_counter), then seconds to first and last token."""

    start: float
    ttft: float | None = None
    latency: float = 0.0
    output_tokens: int | None = None  # None: count the text's tokens afterwards
    text: str = ""
    error: str | None = None


Send = Callable[[aiohttp.ClientSession, str], Awaitable[Outcome]]


async def send_generate(session: aiohttp.ClientSession, url: str, prompt: str,
                        max_tokens: int) -> Outcome:
    """POST ``/generate`` and time BentoML's streamed text, chunk by chunk."""
    outcome = Outcome(start=time.perf_counter())
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
    outcome.text = b"".join(chunks).decode("utf-8", errors="replace")
    if outcome.ttft is None:
        outcome.error = "empty answer"
    return outcome


async def send_chat(session: aiohttp.ClientSession, url: str, model: str, prompt: str,
                    max_tokens: int) -> Outcome:
    """A streaming chat completion sent and timed by vLLM's own request function, greedy, EOS
    honoured (``vllm bench serve`` forces ``ignore_eos`` on its random dataset)."""
    from vllm.benchmarks.lib.endpoint_request_func import (
        RequestFuncInput,
        async_request_openai_chat_completions,
    )

    request = RequestFuncInput(prompt=prompt, api_url=url, prompt_len=0, output_len=max_tokens,
                               model=model, extra_body={"temperature": 0.0}, ignore_eos=False)
    out = await async_request_openai_chat_completions(request, session)
    if not out.success:
        return Outcome(start=out.start_time, error=out.error[-500:] or "failed")
    return Outcome(start=out.start_time, ttft=out.ttft, latency=out.latency,
                   output_tokens=out.output_tokens or None, text=out.generated_text)


async def _send_all(prompts: list[str], concurrency: int,
                    send: Send) -> tuple[list[Outcome], float]:
    # The connection pool and timeout of vLLM's client; all requests queued at once.
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency,
                                     keepalive_timeout=60, force_close=False)
    timeout = aiohttp.ClientTimeout(total=6 * 60 * 60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        semaphore = asyncio.Semaphore(concurrency)

        async def limited(prompt: str) -> Outcome:
            async with semaphore:
                return await send(session, prompt)

        start = time.perf_counter()
        outcomes = await asyncio.gather(*(limited(p) for p in prompts))
        return list(outcomes), time.perf_counter() - start


def _records(prompts: list[str], outcomes: list[Outcome], duration: float,
             client: str) -> RunResult:
    """Token counts are taken after the run, as vLLM's client does, so they cost no time in it:
    the server's usage figure when it sent one, else the re-tokenised text."""
    records, failures = [], []
    for prompt, o in zip(prompts, outcomes, strict=True):
        if o.error is not None or o.ttft is None:
            failures.append(o.error or "no token")
            continue
        tokens = o.output_tokens if o.output_tokens is not None else count_tokens(o.text)
        records.append(RequestRecord(o.ttft, o.latency, tokens, chat_prompt_tokens(prompt)))
    return RunResult(records, duration, failures, {"client": client})


def generate_run(base_url: str, prompts: list[str], workload: Workload,
                 concurrency: int) -> RunResult:
    """``prompts`` to ``/generate``, at most ``concurrency`` in flight. ``/generate`` has no
    ``ignore_eos``: an answer may end before ``output_len`` tokens."""
    url = f"{base_url}/generate"
    outcomes, duration = asyncio.run(_send_all(
        prompts, concurrency, lambda s, p: send_generate(s, url, p, workload.output_len)))
    return _records(prompts, outcomes, duration, "bench.clients.send_generate")


def chat_run(base_url: str, model: str, prompts: list[str], workload: Workload,
             concurrency: int) -> RunResult:
    """The same requests as ``generate_run``, to ``/v1/chat/completions``: its counterpart."""
    url = f"{base_url}/v1/chat/completions"
    outcomes, duration = asyncio.run(_send_all(
        prompts, concurrency, lambda s, p: send_chat(s, url, model, p, workload.output_len)))
    return _records(prompts, outcomes, duration, "bench.clients.send_chat (vLLM's request func)")
