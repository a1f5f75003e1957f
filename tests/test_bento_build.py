"""The README's Llama build commands, run as written against a loopback stand-in for the
Hugging Face hub (the real one is out of reach here); bad build arguments fail the build; and
`bentoml deploy`'s own checks accept the Llama Bento with deploy/bentocloud.yaml."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from bentoml._internal.bento.bento import Bento
from bentoml._internal.cloud import deployment as cloud_deployment
from bentoml._internal.cloud.secret import SecretAPI
from bentoml.exceptions import BentoMLException

from tests import bentos, readme
from tests.bentos import Built
from tests.test_deploy_config import CONFIG, ROOT

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture(scope="module")
def llama_builds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, Built]]:
    """The README's Llama `bentoml build` commands, each in a fresh BentoML home, keyed by the
    GPU count each asks for."""
    builds: dict[int, Built] = {}
    with bentos.stand_in_hub() as hub:
        for i, command in enumerate(readme.commands(f"bentoml build --arg model_id={LLAMA}")):
            home = tmp_path_factory.mktemp(f"bentoml-home-llama-{i}")
            env = bentos.bentoml_env(home, HF_ENDPOINT=hub, HF_TOKEN="hf_stand_in")
            bentos.check(bentos.run_bentoml(command, env))
            built = bentos.latest(home)
            builds[built.service["config"]["resources"]["gpu"]] = built
    yield builds


def test_readme_builds_llama_on_one_l4_and_on_two(llama_builds: dict[int, Built]) -> None:
    assert sorted(llama_builds) == [1, 2]
    for gpus, built in llama_builds.items():
        assert built.service["config"]["resources"] == {"gpu": gpus, "gpu_type": "nvidia-l4"}
        assert built.info["args"]["model_id"] == LLAMA


def test_llama_bento_references_the_hub_model_at_a_fixed_revision(
        llama_builds: dict[int, Built]) -> None:
    (model,) = llama_builds[1].service["models"]
    assert model["registry"] == "huggingface"
    assert model["metadata"]["model_id"] == LLAMA.lower()
    assert model["metadata"]["revision"] == bentos.FAKE_REVISION
    assert model["metadata"]["exclude"] == ["*.pth", "*.pt"]
    # The weights are downloaded by replicas, not packed.
    assert not (llama_builds[1].path / "models").exists()


def test_llama_bento_declares_hf_token_without_a_value(llama_builds: dict[int, Built]) -> None:
    envs = llama_builds[1].info["envs"]
    assert [(e["name"], e.get("value", "")) for e in envs] == [("HF_TOKEN", "")]


@pytest.mark.parametrize(
    ("arg", "message"),
    [("gpu_count=0", "Input should be greater than or equal to 1"),
     ("gpu_type=nvidia-l5", "gpu_type"),
     ("max_tokens=4096", "max_tokens (4096) must be below max_model_len (2048)"),
     ("modle_id=x", "unknown build argument(s) modle_id")],
)
def test_bad_build_argument_fails_the_build(tmp_path: Path, arg: str, message: str) -> None:
    result = bentos.run_bentoml(f"bentoml build --arg {arg}", bentos.bentoml_env(tmp_path))
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "bentos" / bentos.BENTO_NAME).exists()


def deploy_params(secrets: list[str] | None) -> cloud_deployment.DeploymentConfigParameters:
    """What `bentoml deploy -f deploy/bentocloud.yaml [--secret ...]` builds from its flags."""
    return cloud_deployment.DeploymentConfigParameters(
        config_file=str(CONFIG.relative_to(ROOT)), path_context=str(ROOT), secrets=secrets,
        cli=True,
    )


@pytest.fixture
def offline_cloud(monkeypatch: pytest.MonkeyPatch, llama_builds: dict[int, Built]) -> None:
    """BentoCloud's side of `bentoml deploy`, answered here: the build-and-push step yields the
    Llama Bento built above, and the `huggingface` secret holds HF_TOKEN."""
    bento = Bento.from_path(str(llama_builds[1].path))
    monkeypatch.chdir(ROOT)  # `bento: .` in the file is the repository
    monkeypatch.setattr(cloud_deployment, "ensure_bento", lambda **_: bento)

    def secret(self: SecretAPI, name: str, cluster: str | None = None) -> Any:
        assert name == "huggingface"
        return SimpleNamespace(content=SimpleNamespace(
            type="env", items=[SimpleNamespace(key="HF_TOKEN")]))

    monkeypatch.setattr(SecretAPI, "get", secret)


@pytest.mark.usefixtures("offline_cloud")
def test_deploy_checks_pass_with_the_readmes_secret_flag() -> None:
    params = deploy_params(["huggingface"])
    params.verify(_client=None)
    config = params.get_config_dict(_client=None)
    assert config["secrets"] == ["huggingface"]
    assert config["services"]["vllm-llm"]["scaling"]["max_replicas"] >= 1


@pytest.mark.usefixtures("offline_cloud")
def test_deploy_checks_refuse_the_file_alone() -> None:
    # Why the README keeps --secret on the command line next to -f.
    with pytest.raises(BentoMLException, match="HF_TOKEN"):
        deploy_params(None).verify(_client=None)
