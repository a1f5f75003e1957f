"""Schemathesis, run against the service's own OpenAPI documents: BentoML's ``/docs.json``
(``/generate`` and the health routes) and ``/v1/openapi.json`` (vLLM's OpenAI operations).
No server error and no response that breaks the schema; the server still answers afterwards.

The fuzzed server has a short context (256 tokens) so every generated request is quick.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests import served
from tests.conftest import MODEL

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ST = str(Path(sys.executable).with_name("st"))
EXAMPLES = "8"  # per operation and phase; bounded so the run takes minutes, not hours
V1_OPERATIONS = r"^/v1/(chat/completions|completions|models)$"
ENV = {"LLM_MAX_MODEL_LEN": "256", "LLM_MAX_TOKENS": "128"}
SERVERS = {"fuzz": ENV}  # started early (conftest.pytest_runtest_setup)


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[served.Served]:
    with served.serving("fuzz", ENV) as s:
        yield s


def schemathesis(*args: str) -> subprocess.CompletedProcess[str]:
    report = served.ARTIFACTS / "schemathesis"
    cmd = [ST, "run", *args, "--checks", "not_a_server_error,response_schema_conformance",
           "--max-examples", EXAMPLES, "--phases", "examples,coverage,fuzzing", "--seed", "1",
           "--request-timeout", "120", "--report", "junit", "--report-dir", str(report)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    print(result.stdout[-3000:])
    return result


def test_bentoml_routes_survive_fuzzing(fuzzed: served.Served) -> None:
    result = schemathesis(f"{fuzzed.url}/docs.json")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


def test_openai_routes_survive_fuzzing(fuzzed: served.Served) -> None:
    result = schemathesis(f"{fuzzed.url}/v1/openapi.json", "--url", fuzzed.url,
                          "--include-path-regex", V1_OPERATIONS)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


def test_server_still_answers_after_fuzzing(fuzzed: served.Served) -> None:
    client = openai.OpenAI(base_url=f"{fuzzed.url}/v1", api_key="na", timeout=120)
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8)
    assert reply.choices[0].message.content
