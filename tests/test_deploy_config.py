"""deploy/bentocloud.yaml, checked against BentoML's own deployment and service schemas, and the
README's deploy command parsed by BentoML's own CLI."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import bentoml
import pytest
import yaml
from _bentoml_sdk.service.config import validate as validate_service_config
from bentoml._internal.cloud.deployment import DeploymentAPI
from bentoml._internal.cloud.schemas.schemasv2 import CreateDeploymentSchema
from bentoml._internal.utils.args import set_arguments
from bentoml._internal.utils.cattr import bentoml_cattr
from bentoml_cli.deployment import deploy_command

from tests import readme
from vllm_bento.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "deploy" / "bentocloud.yaml"
SERVICE_NAME = "vllm-llm"


def deploy_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    return config


def service_config() -> dict[str, Any]:
    service: dict[str, Any] = deploy_config()["services"][SERVICE_NAME]
    return service


def missing_keys(given: Any, kept: Any, path: str = "") -> list[str]:
    """Keys of ``given`` absent from ``kept``: BentoML's schemas drop unknown keys silently, so a
    misspelt key would otherwise pass."""
    if isinstance(given, dict):
        if not isinstance(kept, dict):
            return [path or "."]
        return [m for k, v in given.items()
                for m in ([f"{path}.{k}"] if k not in kept else
                          missing_keys(v, kept[k], f"{path}.{k}"))]
    if isinstance(given, list) and isinstance(kept, list):
        return [m for i, (g, k) in enumerate(zip(given, kept, strict=True))
                for m in missing_keys(g, k, f"{path}[{i}]")]
    return []


def test_config_is_a_valid_bentocloud_deployment() -> None:
    config = deploy_config()
    # What DeploymentAPI.create does with the file before sending it.
    schema = bentoml_cattr.structure(config, CreateDeploymentSchema)
    DeploymentAPI._fix_and_validate_schema(schema)
    assert missing_keys(config, bentoml_cattr.unstructure(schema)) == []


def test_config_names_the_service_and_the_readmes_secret() -> None:
    import service

    assert service.VLLM.name == SERVICE_NAME  # type: ignore[attr-defined]  # a bentoml.Service
    assert deploy_config()["secrets"] == ["huggingface"]
    assert any("bentoml secret create huggingface HF_TOKEN=" in c
               for c in readme.commands("bentoml secret create"))


def test_scaling_bounds_and_concurrency_target() -> None:
    svc = service_config()
    scaling = svc["scaling"]
    assert 0 <= scaling["min_replicas"] <= scaling["max_replicas"]
    traffic = validate_service_config(svc["config_overrides"])["traffic"]
    assert missing_keys(svc["config_overrides"], {"traffic": traffic}) == []
    # Scale out before the per-replica cap turns requests away.
    envs = {e["name"]: e["value"] for e in svc["envs"]}
    assert traffic["concurrency"] < int(envs["LLM_MAX_IN_FLIGHT"])


def test_config_envs_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in service_config()["envs"]:
        monkeypatch.setenv(env["name"], env["value"])
    load_settings()  # raises on a value the service would refuse at start


def test_readme_deploy_command_parses_with_bentomls_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the README runs it from the repository root
    argv = shlex.split(readme.command("bentoml deploy"))
    assert argv[:2] == ["bentoml", "deploy"]
    set_arguments({})
    try:
        params = deploy_command.make_context("deploy", argv[2:]).params
        build_args = vars(bentoml.use_arguments())  # --arg is applied while parsing
    finally:
        set_arguments({})
    with params["config_file"] as config_file:
        assert Path(config_file.name).resolve() == CONFIG
    assert params["secret"] == ("huggingface",)
    assert load_settings(**build_args).model_id == "meta-llama/Llama-3.1-8B-Instruct"
