"""The run's environment reaches the servers that tests start, and only them: a GPU run's
``LLM_GPU_MEMORY_UTILIZATION=0.28`` must hold for a server a test starts inside its own body
(the lifecycle and engine-death tests), while unit tests still see no ``LLM_*`` variable.

Proven in a pytest run of its own, started with such a variable, through the real conftest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.served import ARTIFACTS, ROOT

INNER = '''
import os
import sys

from tests import served


def test_inner(tmp_path):
    # Unit tests see none of the run's settings ...
    assert "LLM_GPU_MEMORY_UTILIZATION" not in os.environ
    # ... a server a test starts sees them, under its own.
    env = served.server_env({"LLM_MAX_TOKENS": "256"})
    assert env["LLM_GPU_MEMORY_UTILIZATION"] == "0.28" and env["LLM_MAX_TOKENS"] == "256"
    assert served.server_env({"LLM_GPU_MEMORY_UTILIZATION": "0.5"})[
        "LLM_GPU_MEMORY_UTILIZATION"] == "0.5"
    # and the process launch() starts really gets them.
    log = tmp_path / "child.log"
    child = served.launch([sys.executable, "-c",
                           "import os; print(os.environ['LLM_GPU_MEMORY_UTILIZATION'], "
                           "os.environ['LLM_MAX_TOKENS'])"],
                          port=0, log=log, env={"LLM_MAX_TOKENS": "256"})
    assert child.process.wait(60) == 0
    assert log.read_text().split() == ["0.28", "256"]
'''


def test_servers_get_the_runs_llm_settings_and_unit_tests_do_not(tmp_path: Path) -> None:
    folder = ARTIFACTS / "served-env"  # under tests/, so tests/conftest.py applies
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test_inner_env.py").write_text(INNER)
    env = {**os.environ, "LLM_GPU_MEMORY_UTILIZATION": "0.28"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         str(folder / "test_inner_env.py"), "--basetemp", str(tmp_path / "inner")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "1 passed" in run.stdout
