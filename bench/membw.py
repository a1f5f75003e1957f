"""Memory bandwidth of this machine, measured with numpy, and the decode floor it sets.

Batch-1 decode reads every weight once per token, so ``bandwidth / weight bytes`` bounds its
token rate. Two kernels, each on arrays far larger than the last-level cache:

- read: ``bitwise_or.reduce`` over a uint64 view, a SIMD read-only pass (numpy's float ``sum``
  is compute-bound on one core here, below the memory's speed, so it would understate the bound);
- copy: ``copyto`` between two arrays, counted as bytes read plus bytes written.

"All threads" runs one process per core at once (processes, not threads, so the GIL cannot
serialise them) and counts the bytes of all of them over the slowest one's time.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass

import numpy as np

ARRAY_BYTES = 512 * 2**20  # per process: 16x a 32 MiB L3, so the passes stream from DRAM
PASSES = 5  # best of: the first pass also faults the pages in


@dataclass(frozen=True)
class Bandwidth:
    """GB/s (1e9 bytes) for one kernel, single thread and all threads."""

    read_1t: float
    read_all: float
    copy_1t: float
    copy_all: float
    threads: int


def _pass_seconds(kernel: str, nbytes: int, passes: int) -> list[float]:
    """Seconds of each pass of ``kernel`` over ``nbytes`` of fresh memory."""
    src = np.ones(nbytes // 8, dtype=np.uint64)
    dst = np.empty_like(src) if kernel == "copy" else src
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        if kernel == "copy":
            np.copyto(dst, src)
        else:
            np.bitwise_or.reduce(src)
        times.append(time.perf_counter() - start)
    return times


def _worker(kernel: str, nbytes: int, passes: int, barrier: object) -> list[float]:
    barrier.wait()  # type: ignore[attr-defined]  # start together so the passes overlap
    return _pass_seconds(kernel, nbytes, passes)


def kernel_bytes(kernel: str, nbytes: int) -> int:
    """Bytes a pass moves: a copy reads and writes each byte."""
    return 2 * nbytes if kernel == "copy" else nbytes


def measure(kernel: str, processes: int, nbytes: int = ARRAY_BYTES, passes: int = PASSES) -> float:
    """Best GB/s of ``kernel`` with ``processes`` passes running side by side."""
    if processes == 1:
        return kernel_bytes(kernel, nbytes) / min(_pass_seconds(kernel, nbytes, passes)) / 1e9
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(processes)
        with ctx.Pool(processes) as pool:
            per_proc = pool.starmap(_worker, [(kernel, nbytes, passes, barrier)] * processes)
    # Pass i of every process ran at about the same time; take the slowest of each round.
    slowest: list[float] = [max(times) for times in zip(*per_proc, strict=True)]
    return processes * kernel_bytes(kernel, nbytes) / min(slowest) / 1e9


def measure_all(nbytes: int = ARRAY_BYTES, passes: int = PASSES) -> Bandwidth:
    """Read and copy bandwidth, on one core and on every core."""
    cores = os.cpu_count() or 1
    return Bandwidth(
        read_1t=measure("read", 1, nbytes, passes),
        read_all=measure("read", cores, nbytes, passes),
        copy_1t=measure("copy", 1, nbytes, passes),
        copy_all=measure("copy", cores, nbytes, passes),
        threads=cores,
    )


def decode_floor_tok_s(bandwidth_gb_s: float, bytes_per_token: int) -> float:
    """Tokens/s at which reading every weight once per token takes all the bandwidth."""
    return bandwidth_gb_s * 1e9 / bytes_per_token
