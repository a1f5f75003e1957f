"""Reading the served instance's Prometheus metrics, and waiting on them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families


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


def finished_requests(url: str) -> float:
    """vLLM's count of requests that finished normally (any finish reason: stop, length, ...);
    a request aborted because its client left or its time ran out is not counted."""
    return scrape(url, "vllm:request_success_total") or 0.0


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             seen: Callable[[], Any] | None = None, poll_s: float = 0.1) -> None:
    """Wait until ``condition()`` holds, for a state that lasts once reached (one the test
    holds open, or a counter): never a passing moment that a poll could miss.

    Raises:
        AssertionError: not within ``timeout`` seconds; the message says what was waited
            for and what ``seen()`` (default: the condition's last value) showed.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s; saw: "
                                 f"{seen() if seen else 'the condition false'}")
        time.sleep(poll_s)


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
