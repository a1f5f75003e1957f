"""``python -m bench.layer`` (``make bench-layer``): how much the service's own layer costs a
token stream, on a CPU, in a few minutes.

It starts two servers of the same stand-in for vLLM's OpenAI app (``bench.layer.standin``):

- ``direct``: the stand-in alone, ``python -m uvicorn bench.layer.standin:app``, one worker;
- ``service``: ``bentoml serve bench.layer.service:VLLM``, the real service in front of it.

Then, one server busy at a time, rounds of three runs in rotating order: ``/v1/chat/completions``
direct (``direct_chat``), the same through the service (``service_chat``), and the service's
``/generate`` (``service_generate``), each with ``--concurrency`` closed-loop streaming clients
for ``--duration-s`` after a short warm-up. Prints one JSON line (requests/s, chunks/s, time per
chunk, TTFT, failures, CPU, the ratios and the issue's target) and writes it to
``bench/results/layer.json``; logs go to stderr, the servers' to ``bench/results/tmp/layer/``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import psutil

from bench.layer.load import MAX_TOKENS, Route, chat_route, generate_route, run_load
from bench.layer.summary import (
    DIRECT,
    SERVICE_CHAT,
    SERVICE_GENERATE,
    SYSTEMS,
    RunData,
    rounded,
    summarize,
)
from launch import Served, free_port, launch, own_bentoml_home, serve_command, stop, tree
from launch import wait_ready as wait_served

ROOT = Path(__file__).resolve().parents[2]
RESULT = ROOT / "bench" / "results" / "layer.json"
LOGS = ROOT / "bench" / "results" / "tmp" / "layer"
READY_TIMEOUT_S = 300.0
SERVICE_TARGET = "bench.layer.service:VLLM"
DISTURBED_CORES = 0.2  # CPU used by neither client nor servers, past which a run is flagged
VERSIONS = ("bentoml", "uvicorn", "starlette", "fastapi", "aiohttp", "uvloop", "httptools",
            "h11")

logger = logging.getLogger("bench.layer")


def direct_argv(port: int) -> list[str]:
    # No access log: the service runs vLLM's app with --disable-uvicorn-access-log too.
    return [sys.executable, "-m", "uvicorn", "bench.layer.standin:app", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1", "--no-access-log", "--log-level", "warning"]


@contextmanager
def running(name: str, argv: list[str], port: int, ready_path: str,
            env: dict[str, str] | None = None) -> Iterator[Served]:
    """A server started in its own process group, ready, stopped (the whole group) on exit."""
    served = launch(argv, port, LOGS / f"server-{name}.log", env)
    try:
        seconds = wait_served(served, READY_TIMEOUT_S, ready_path, 0.25)
        pids = [p.pid for p in tree(served.process.pid)]
        logger.info("%s ready in %.1f s on %s (pids %s)", name, seconds, served.url, pids)
        yield served
    finally:
        stop(served)


def serve_both(stack: ExitStack) -> dict[str, tuple[Served, Route]]:
    """Start the bare stand-in and the service (stopped when ``stack`` closes); each system
    with its server and route."""
    port = free_port()
    direct = stack.enter_context(running("direct", direct_argv(port), port, "/health"))
    port = free_port()
    env = {"BENTOML_HOME": str(own_bentoml_home("bench-layer"))}  # its own Prometheus dir
    service = stack.enter_context(running("service", serve_command(port, SERVICE_TARGET), port,
                                          "/readyz", env))
    return {DIRECT: (direct, chat_route(direct.url)),
            SERVICE_CHAT: (service, chat_route(service.url)),
            SERVICE_GENERATE: (service, generate_route(service.url))}


def tree_cpu_s(pid: int) -> float:
    """User + system CPU-seconds of ``pid`` and its descendants so far."""
    total = 0.0
    for proc in tree(pid):
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def rotated(order: tuple[str, ...], repeat: int) -> list[str]:
    """``order`` started at its ``repeat``-th entry: each system goes first once per 3 rounds."""
    k = repeat % len(order)
    return [*order[k:], *order[:k]]


def measure(servers: dict[str, tuple[Served, Route]], args: argparse.Namespace) -> list[RunData]:
    runs = []
    for repeat in range(args.repeats):
        for system in rotated(SYSTEMS, repeat):
            served, route = servers[system]
            m = run_load(route, args.concurrency, args.duration_s, args.warmup_s,
                         partial(tree_cpu_s, served.process.pid))
            run = RunData(system, repeat, m.wall_s, m.tally.samples, m.tally.failures,
                          m.client_cpu_s, m.server_cpu_s, m.machine_cpu_s)
            log_run(run)
            runs.append(run)
    return runs


def log_run(run: RunData) -> None:
    chunks = sum(s.chunks for s in run.samples)
    others = max(0.0, run.machine_cpu_s - run.client_cpu_s - run.server_cpu_s) / run.wall_s
    logger.info("repeat %d %-16s %6d requests %8.0f chunks/s  cores: client %.2f, server %.2f, "
                "others %.2f  failures %s", run.repeat, run.system, len(run.samples),
                chunks / run.wall_s, run.client_cpu_s / run.wall_s,
                run.server_cpu_s / run.wall_s, others, dict(run.failures))
    if others > DISTURBED_CORES:
        logger.warning("other processes used %.2f cores during this run: its figures are not "
                       "those of a quiet machine", others)


def host(service_revision: str) -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for dist in VERSIONS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {"cpu_count": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), "versions": versions,
            "service_revision": service_revision}


def revision() -> str:
    """The commit the measured service code is at, ``+dirty`` when its files have changes."""
    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "service.py", "vllm_bento") else "")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.layer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=64, help="streaming clients")
    parser.add_argument("--duration-s", type=float, default=10.0, help="length of each run")
    parser.add_argument("--warmup-s", type=float, default=2.0, help="untimed, before each run")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the three runs")
    parser.add_argument("--output", type=Path, default=RESULT, help="where the JSON goes")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness poll
    measured = revision()  # the code the service is started with
    with ExitStack() as stack:
        runs = measure(serve_both(stack), args)
    config = {"concurrency": args.concurrency, "duration_s": args.duration_s,
              "warmup_s": args.warmup_s, "repeats": args.repeats, "max_tokens": MAX_TOKENS}
    result = rounded({"benchmark": "bench.layer", "config": config, "host": host(measured),
                      **summarize(runs)})
    line = json.dumps(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
