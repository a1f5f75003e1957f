"""Fixtures shared by the test tiers: one served instance per session for the e2e tests."""

from __future__ import annotations

import shutil
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING

import bentoml
import openai
import pytest
from bentoml._internal.utils.args import set_arguments

from tests import served
from tests.served import Served, serving
from vllm_bento.settings import PACKAGED_MODEL_ID

if TYPE_CHECKING:
    from playwright.sync_api import Browser

MODEL = PACKAGED_MODEL_ID


def gpu_count() -> int:
    """NVIDIA GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` where set, else all that
    nvidia-smi lists (0 without it)."""
    import os
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return 0
    if (visible := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        return len([d for d in visible.split(",") if d.strip()])
    out = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True)
    return len(out.stdout.splitlines()) if out.returncode == 0 else 0


def pytest_configure(config: pytest.Config) -> None:
    served.OVERLAP = gpu_count() == 0  # see served.OVERLAP


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu(n)`` tests are skipped on a machine with fewer than n GPUs (CI runs on a CPU)."""
    have = gpu_count()
    for item in items:
        if (marker := item.get_closest_marker("gpu")) is not None:
            need = marker.args[0] if marker.args else 1
            if have < need:
                item.add_marker(pytest.mark.skip(reason=f"needs {need} GPU(s), {have} here"))


_MODULES_BEGUN: set[object] = set()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """As each module begins, start the servers of the next module that declares some (a
    module-level ``SERVERS = {name: env}``, the names and settings its tests pass to
    ``served.start``/``serving``): their engines load while this module runs. The first
    module also starts the shared server, if any test uses it."""
    module = getattr(item, "module", None)
    if module is None or module in _MODULES_BEGUN:
        return
    _MODULES_BEGUN.add(module)
    items = item.session.items
    if len(_MODULES_BEGUN) == 1 and any("server" in getattr(i, "fixturenames", ())
                                        for i in items):
        served.prestart("shared")
    order = list(dict.fromkeys(getattr(i, "module", None) for i in items))
    for later in order[order.index(module) + 1:]:
        if servers := getattr(later, "SERVERS", None):
            for name, env in servers.items():
                served.prestart(name, env)
            return


def pytest_sessionfinish(session: pytest.Session) -> None:
    served.stop_prestarted()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test that talked to a server shows the end of that server's log: CI keeps only
    what pytest prints, not tests/artifacts."""
    report = yield
    if report.failed:
        for name, value in getattr(item, "funcargs", {}).items():
            if isinstance(value, Served):
                report.sections.append((f"server log: {name} ({value.log.name})",
                                        value.log_tail()))
    return report


@pytest.fixture(scope="session")
def server() -> Iterator[Served]:
    """The default service, started once with `bentoml serve` and shared by the e2e tests."""
    with serving("shared") as served:
        yield served


@pytest.fixture
def openai_client(server: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=300)


@pytest.fixture
def bento_client(server: Served) -> Iterator[bentoml.SyncHTTPClient]:
    with bentoml.SyncHTTPClient(server.url, timeout=300, server_ready_timeout=300) as client:
        yield client


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium for the chat page tests. One per module, not per session: Playwright's
    sync API keeps an event loop running in this thread, and later tests call asyncio.run()."""
    from tests.browser import chromium  # Playwright: not installed on a GPU host

    with chromium() as launched:
        yield launched


@pytest.fixture(autouse=True)
def _clean_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Unit tests see only the settings they set, from either source: no ``LLM_*`` variables and
    no BentoML build arguments (which BentoML keeps process-wide, so none is left to later
    tests either). The served instance has its own process."""
    import os

    for name in list(os.environ):
        if name.startswith("LLM_"):
            monkeypatch.delenv(name)
    set_arguments({})
    yield
    set_arguments({})
