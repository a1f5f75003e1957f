"""Start-up and shutdown of a server of its own: readiness follows the engine, and stopping
leaves no engine process behind."""

from __future__ import annotations

import time

import httpx
import psutil
import pytest

from tests import served

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def engine_processes(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_ready_only_with_engine_and_sigterm_leaves_no_engine_process() -> None:
    server = served.start("lifecycle")
    try:
        while True:  # until ready, every answer /readyz gives must be "not ready"
            try:
                ready = httpx.get(f"{server.url}/readyz", timeout=5).status_code
            except httpx.HTTPError:
                assert server.process.poll() is None, f"server died; see {server.log}"
                time.sleep(0.5)
                continue
            if ready == 200:
                break
            assert ready == 503
            time.sleep(0.5)
        assert httpx.get(f"{server.url}/livez", timeout=5).status_code == 200
        assert httpx.get(f"{server.url}/v1/models", timeout=5).status_code == 200
        children = server.descendants()
        assert any("EngineCore" in p.name() or "EngineCore" in " ".join(p.cmdline())
                   for p in children), [p.name() for p in children]
    finally:
        code = served.stop(server)
    assert code == 0, f"exit code {code}; see {server.log}"
    psutil.wait_procs(children, timeout=15)
    left = engine_processes(children)
    assert not left, f"left behind: {[(p.pid, p.name()) for p in left]}"
