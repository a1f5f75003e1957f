"""Where a server's CPU time goes under load: CPU seconds of each of its processes while vLLM's
client drives it, and py-spy samples of them grouped into what the time went on.

A server is three kinds of process: the front end (the HTTP server, the OpenAI layer and the
engine client: vLLM's API server, or BentoML's worker for the service, plus BentoML's idle
arbiter), vLLM's engine core (the scheduler) and vLLM's worker (the model). Comparing the front
ends' CPU seconds per 1000 output tokens is what BentoML and our middleware cost over
``vllm serve``; the worker's split between matmuls, attention and the rest is why batch-1 decode
sits below the memory-bandwidth floor.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from bench.servers import tree

PY_SPY = str(Path(sys.executable).with_name("py-spy"))
RATE_HZ = 50  # low enough not to slow what it watches much on two cores

# What a sample was spent on. Frames look like "function (package/module.py:line)". First the
# engine's operations, in this order, wherever they are in the stack (a matmul called from the
# model runner is a matmul); else the layer of the innermost frame that has one (a pydantic call
# from vLLM's OpenAI code is that code's, a socket write from uvicorn the HTTP server's, even
# though vLLM's API server has its own entrypoint at the root of every stack).
OPERATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("waiting for the other process", ("sched_yield", "shm_broadcast.py")),
    ("matmul (oneDNN)", ("onednn_mm",)),
    ("attention", ("cpu_attention_with_kv_cache", "cpu_attn_reshape_and_cache", "cpu_attn.py")),
    ("norms, activations, rotary", ("layernorm.py", "activation.py", "rotary_embedding")),
    ("sampling", ("vllm/v1/sample/",)),
    ("scheduler", ("vllm/v1/core/",)),
)
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("IPC (zmq, msgpack)", ("zmq/", "msgspec", "serial_utils.py")),
    ("engine loop, output processing", ("vllm/v1/engine/", "tokenizers")),
    ("tracing, metrics", ("opentelemetry/", "prometheus_client/", "vllm/v1/metrics/")),
    ("vLLM's OpenAI layer", ("vllm/entrypoints/",)),
    ("HTTP server, middleware", ("uvicorn/", "starlette/", "fastapi/", "bentoml/", "_bentoml",
                                 "vllm_bento/", "httptools", "h11/")),
    ("rest of the model's forward", ("model_executor/",)),
    ("model runner", ("model_runner", "vllm/v1/worker/")),
)
OTHER = "other (event loop, Python)"
ROLES = ("front end", "engine core", "worker")


def role(command: str) -> str:
    """``worker``, ``engine core`` or ``front end``, from vLLM's process titles."""
    if "VLLM::Worker" in command:
        return "worker"
    if "VLLM::EngineCore" in command:
        return "engine core"
    return "front end"


def command(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline()) or proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""


def cpu_seconds(procs: list[psutil.Process]) -> dict[int, float]:
    out = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def category(frames: list[str]) -> str:
    for name, patterns in OPERATIONS:
        if any(p in frame for frame in frames for p in patterns):
            return name
    for frame in reversed(frames):
        for name, patterns in LAYERS:
            if any(p in frame for p in patterns):
                return name
    return OTHER


def parse_samples(text: str) -> dict[str, Counter[str]]:
    """py-spy's raw output (``--subprocesses``: the first frames are ``process PID:"command"``,
    outermost first) → sample counts by role and category."""
    counts: dict[str, Counter[str]] = {name: Counter() for name in ROLES}
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        processes = [f for f in frames if f.startswith("process ")]
        code = [f for f in frames if not f.startswith("process ")]
        counts[role(processes[-1] if processes else "")][category(code)] += int(n)
    return counts


def profile(root_pid: int, drive: Callable[[], int], out: Path) -> dict[str, Any]:
    """Run ``drive`` (load on the server; returns the output tokens it got) while py-spy samples
    every process under ``root_pid``; CPU seconds and sample shares by role."""
    procs = tree(root_pid)
    roles = {p.pid: role(command(p)) for p in procs}
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen(
        [PY_SPY, "record", "--pid", str(root_pid), "--subprocesses", "--nonblocking",
         "--rate", str(RATE_HZ), "--format", "raw", "--output", str(out),
         "--duration", "600"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2)  # py-spy attaches to each process first
    before, started = cpu_seconds(procs), time.monotonic()
    try:
        tokens = drive()
    finally:
        after, wall = cpu_seconds(procs), time.monotonic() - started
        spy.send_signal(signal.SIGINT)  # py-spy writes its samples and exits
        spy.wait(60)
    by_role = dict.fromkeys(ROLES, 0.0)
    for pid, seconds in after.items():
        by_role[roles[pid]] += seconds - before.get(pid, seconds)
    samples = parse_samples(out.read_text() if out.is_file() else "")
    return {
        "wall_s": wall, "output_tokens": tokens,
        "roles": {
            name: {"cpu_s": by_role[name],
                   "cpu_s_per_1k_tokens": 1000 * by_role[name] / max(tokens, 1),
                   "samples": sum(samples[name].values()),
                   "categories": dict(samples[name].most_common())}
            for name in by_role
        },
    }
