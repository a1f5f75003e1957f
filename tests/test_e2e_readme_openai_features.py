"""The README's "OpenAI features" examples (structured output, tools), run as written against
the test server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests import readme
from tests.served import Served

pytestmark = pytest.mark.e2e


def run_snippet(marker: str, server: Served) -> str:
    """Run the README's Python snippet containing ``marker``; return its output."""
    (snippet,) = [s for s in readme.python_snippets() if marker in s]
    result = subprocess.run([sys.executable, "-c", readme.pointed_at(snippet, server.url)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_readme_structured_output(server: Served) -> None:
    out = run_snippet("response_format=Pirate", server)
    assert out.startswith("name=") and " age=" in out, out


def test_readme_tools(server: Served) -> None:
    name, _, arguments = run_snippet("tools=[weather]", server).partition(" ")
    assert name == "get_weather"
    assert isinstance(json.loads(arguments)["city"], str)
