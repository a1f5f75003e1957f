"""What this machine can run: GPUs, and whether its CPU has a bf16 matrix unit.

Kept apart from the settings so tests can describe hardware without having it.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# CPU flags of a bf16 matrix unit: Intel AMX, and AVX-512 BF16 (Intel Cooper Lake+, AMD Zen 4+).
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


@dataclass(frozen=True)
class Hardware:
    """The facts the engine defaults depend on."""

    gpu_count: int
    cpu_flags: frozenset[str]

    @property
    def has_gpu(self) -> bool:
        return self.gpu_count > 0

    @property
    def cpu_has_bf16_unit(self) -> bool:
        return bool(self.cpu_flags & BF16_CPU_FLAGS)


def read_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The flags of the first CPU in ``cpuinfo``; empty where the file does not exist."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def count_gpus() -> int:
    """NVIDIA GPUs this process may use: those ``nvidia-smi`` lists, capped by
    ``CUDA_VISIBLE_DEVICES`` when set. The variable alone proves nothing: BentoML sets it to "0"
    for a service that asks for a GPU even on a machine without one. torch is not asked either:
    importing a CUDA torch here would initialise CUDA before vLLM starts its workers."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    found = len([line for line in out.splitlines() if line.strip()])
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return found
    return min(found, len([d for d in visible.split(",") if d.strip() not in ("", "-1")]))


@functools.cache
def detect() -> Hardware:
    """This machine's hardware, read once per process."""
    return Hardware(gpu_count=count_gpus(), cpu_flags=read_cpu_flags())
