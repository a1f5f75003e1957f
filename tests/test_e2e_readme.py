"""The README's curl commands and Python snippets, run as written against the test server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests import readme
from tests.served import Served

pytestmark = pytest.mark.e2e


def run_curl(command: str, server: Served) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", readme.pointed_at(command, server.url)],
                          capture_output=True, text=True, timeout=300)


def test_readme_has_the_commands_users_copy() -> None:
    commands = readme.curl_commands()
    assert any("/generate" in c for c in commands)
    assert any("/v1/chat/completions" in c for c in commands)
    assert len(readme.python_snippets()) >= 2  # SDK and BentoML client first, then features


def test_readme_curl_generate(server: Served) -> None:
    (command,) = [c for c in readme.curl_commands() if "/generate" in c]
    result = run_curl(command, server)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip()) > 20
    assert "error" not in result.stdout.lower()[:50]


def test_readme_curl_chat(server: Served) -> None:
    (command,) = [c for c in readme.curl_commands() if "/v1/chat/completions" in c]
    result = run_curl(command, server)
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["choices"][0]["message"]["content"].strip()


@pytest.mark.parametrize("index", [0, 1], ids=["openai-sdk", "bentoml-client"])
def test_readme_python_snippets(server: Served, index: int) -> None:
    snippet = readme.pointed_at(readme.python_snippets()[index], server.url)
    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip()) > 20
