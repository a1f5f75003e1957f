"""The load of ``make bench-layer``: ``concurrency`` closed-loop streaming clients (each sends
its next request when its last one ends) on one aiohttp session, for a fixed time.

Every answer is checked, cheaply, so that a broken stream is counted as a failure and never as
chunks: an OpenAI stream must carry exactly the stand-in's frames and end with ``[DONE]``
(frames are counted by their ``\\n\\n`` terminators, not parsed), and ``/generate``'s text must
be the stand-in's answer. Chunks are tokens: ``max_tokens`` per complete answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import psutil

from bench.layer import standin
from bench.layer.summary import Sample

logger = logging.getLogger(__name__)

PROMPT = "Who are you? Please respond in pirate speak!"
MAX_TOKENS = 128


@dataclass(frozen=True)
class Route:
    """What one system is sent and how its answers are checked."""

    url: str
    body: dict[str, Any]
    check: Callable[[bytes, int], bool]  # (the answer's tail or text, frames seen)
    whole_body: bool = False  # the check needs the whole answer, not only its last bytes


def chat_route(base_url: str) -> Route:
    body = {"model": standin.MODEL_ID, "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": MAX_TOKENS, "stream": True, "stream_options": {"include_usage": True}}
    expected = len(standin.stream_frames(MAX_TOKENS, True))

    def check(tail: bytes, frames: int) -> bool:
        return frames == expected and tail.endswith(standin.DONE)

    return Route(f"{base_url}/v1/chat/completions", body, check)


def generate_route(base_url: str) -> Route:
    text = standin.answer_text(MAX_TOKENS).encode()
    return Route(f"{base_url}/generate", {"prompt": PROMPT, "max_tokens": MAX_TOKENS},
                 lambda body, _frames: body == text, whole_body=True)


@dataclass
class Tally:
    """Requests of one run, as they end."""

    samples: list[Sample] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)


@dataclass
class Measured:
    """One timed run: its requests, its wall time and the CPU time spent meanwhile."""

    tally: Tally
    wall_s: float
    client_cpu_s: float
    server_cpu_s: float
    machine_cpu_s: float  # every process on the machine: the rest is someone else's


@dataclass
class Read:
    """What the client took in of one answer."""

    first_at: float | None = None  # perf_counter when its first bytes came
    frames: int = 0  # SSE frames, by their "\n\n" terminators
    kept: bytes = b""  # the whole answer, or its last bytes


async def read_answer(resp: aiohttp.ClientResponse, whole_body: bool) -> Read:
    read, last = Read(), b""
    async for data in resp.content.iter_any():
        if read.first_at is None:
            read.first_at = time.perf_counter()
        # A frame's "\n\n" may be split across two reads.
        read.frames += data.count(b"\n\n") + (last == b"\n" and data[:1] == b"\n")
        last = data[-1:]
        read.kept = read.kept + data if whole_body else (read.kept + data)[-64:]
    return read


async def one_request(session: aiohttp.ClientSession, route: Route, tally: Tally) -> None:
    """Send one request, read its answer to the end, check it and record it."""
    start = time.perf_counter()
    try:
        async with session.post(route.url, json=route.body) as resp:
            if resp.status != 200:
                await resp.read()
                tally.failures[f"HTTP {resp.status}"] += 1
                return
            read = await read_answer(resp, route.whole_body)
    except (TimeoutError, aiohttp.ClientError) as exc:
        tally.failures[type(exc).__name__] += 1
        return
    latency = time.perf_counter() - start
    if read.first_at is None or not route.check(read.kept, read.frames):
        tally.failures["incomplete answer"] += 1
    else:
        tally.samples.append(Sample(read.first_at - start, latency, MAX_TOKENS))


async def closed_loop(session: aiohttp.ClientSession, route: Route, tally: Tally,
                      until: float) -> None:
    while time.perf_counter() < until:
        await one_request(session, route, tally)


async def clients(session: aiohttp.ClientSession, route: Route, concurrency: int,
                  duration_s: float) -> Tally:
    tally = Tally()
    until = time.perf_counter() + duration_s
    await asyncio.gather(*(closed_loop(session, route, tally, until)
                           for _ in range(concurrency)))
    return tally


async def drive(route: Route, concurrency: int, duration_s: float, warmup_s: float,
                server_cpu: Callable[[], float]) -> Measured:
    """Warm up (connections opened, caches filled), then run ``concurrency`` clients for
    ``duration_s``; the wall time runs until the last answer. ``server_cpu`` reads the server's
    CPU-seconds so far."""
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        warmup = await clients(session, route, concurrency, warmup_s)
        if warmup.failures:
            logger.warning("%s: failures while warming up: %s", route.url, dict(warmup.failures))
        cpu0, server0, machine0 = time.process_time(), server_cpu(), machine_cpu_s()
        start = time.perf_counter()
        tally = await clients(session, route, concurrency, duration_s)
        wall = time.perf_counter() - start
        return Measured(tally, wall, time.process_time() - cpu0, server_cpu() - server0,
                        machine_cpu_s() - machine0)


def machine_cpu_s() -> float:
    """CPU-seconds the machine's cores have been busy so far, or unavailable (``steal``: the
    hypervisor ran someone else); ``guest`` time is already part of ``user``."""
    times = psutil.cpu_times()._asdict()
    busy = ("user", "nice", "system", "irq", "softirq", "steal")
    return float(sum(times.get(name, 0.0) for name in busy))


def run_load(route: Route, concurrency: int, duration_s: float, warmup_s: float,
             server_cpu: Callable[[], float]) -> Measured:
    """``drive`` on uvloop when installed (a cheaper client leaves more CPU to the servers,
    which share this machine's cores with it)."""
    try:
        import uvloop
        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(drive(route, concurrency, duration_s, warmup_s, server_cpu))
