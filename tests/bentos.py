"""Run the README's `bentoml` commands against a BentoML home of the test's own, and read what
they built, for the Bento tests."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from tests.served import ROOT, server_env

BENTO_NAME = "vllm-llm"
COMMAND_TIMEOUT_S = 600  # a build locks the requirements against PyPI: slow on a busy machine


def bentoml_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment for a `bentoml` command using ``home`` as its model and Bento store, over
    the run's own (``served.server_env``: a server it starts gets the run's ``LLM_*``)."""
    return server_env({"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", **extra})


def run_bentoml(command: str, env: dict[str, str],
                cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run a README `bentoml ...` command as written, in bash, with this venv's bentoml first
    on the PATH."""
    assert shlex.split(command)[0] == "bentoml", command
    path = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(["bash", "-c", command], cwd=cwd, env={**env, "PATH": path},
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)


def check(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"{result.args} exited {result.returncode}:\n{result.stderr}"
    return result


@dataclass(frozen=True)
class Built:
    """A Bento in a store: its folder and its bento.yaml."""

    path: Path

    @property
    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = yaml.safe_load((self.path / "bento.yaml").read_text())
        return info

    @property
    def service(self) -> dict[str, Any]:
        (service,) = self.info["services"]
        assert isinstance(service, dict)
        return service


def latest(home: Path, name: str = BENTO_NAME) -> Built:
    """The Bento that `name:latest` means in ``home``'s store."""
    folder = home / "bentos" / name
    return Built(folder / (folder / "latest").read_text().strip())


def link_model_store(home: Path, model_path: Path) -> None:
    """Give ``home`` the stored model at ``model_path`` (read-only use) without copying it."""
    name_dir = model_path.parent
    (home / "models").mkdir(parents=True, exist_ok=True)
    (home / "models" / name_dir.name).symlink_to(name_dir, target_is_directory=True)


FAKE_REVISION = "0123456789abcdef0123456789abcdef01234567"


class _HubModelInfo(BaseHTTPRequestHandler):
    """Answers the one hub call `bentoml build` makes for a HuggingFaceModel: the model's info at
    a revision (`GET /api/models/<repo>/revision/<rev>`), with a fixed commit hash."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        prefix, _, rest = self.path.partition("/api/models/")
        repo, found, _ = rest.partition("/revision/")
        if prefix or not found:
            self.send_error(404)
            return
        body = json.dumps({"id": repo, "sha": FAKE_REVISION, "siblings": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@contextmanager
def stand_in_hub() -> Iterator[str]:
    """A loopback stand-in for the Hugging Face hub's model-info endpoint; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HubModelInfo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
