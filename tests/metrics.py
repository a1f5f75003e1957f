"""Reading the served instance's Prometheus metrics and process memory."""

from __future__ import annotations

import time

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from tests.served import tree


def scrape(url: str, name: str, **labels: str) -> float | None:
    """The sum of a vLLM series on /metrics (matching ``labels``), None when absent."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values = [sample.value for family in text_string_to_metric_families(text)
              for sample in family.samples
              if sample.name == name and labels.items() <= sample.labels.items()]
    return sum(values) if values else None


def generated_tokens(url: str) -> float:
    """vLLM's count of tokens generated so far; counted as each engine step's output arrives.
    (Requests aborted because their client left are not counted under
    ``vllm:request_success_total{finished_reason="abort"}``, so that cannot prove an abort.)"""
    return scrape(url, "vllm:generation_tokens_total") or 0.0


def seconds_until_generation_stops(url: str, quiet_s: float = 2.0, timeout: float = 20.0) -> float:
    """Seconds from now until the engine produced its last token, once no token has been
    generated for ``quiet_s``; raises if generation does not stop within ``timeout``."""
    start = time.monotonic()
    last_count, last_change = generated_tokens(url), start
    while time.monotonic() - start < timeout:
        time.sleep(0.1)
        count = generated_tokens(url)
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        elif time.monotonic() - last_change >= quiet_s:
            return last_change - start
    raise AssertionError(f"the engine still generates tokens after {timeout} s")


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB."""
    total = 0
    for p in tree(pid):
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20
