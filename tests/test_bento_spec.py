"""What the service declares for the Bento, per settings (the builds themselves are in
test_bento_build.py and test_e2e_bento.py)."""

from __future__ import annotations

from pathlib import Path

import bentoml

from tests import bentos
from vllm_bento import bento_spec
from vllm_bento.packaged_model import MODEL_TAG
from vllm_bento.settings import load_settings

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


def test_default_references_the_stored_model_and_declares_no_env() -> None:
    settings = load_settings()
    ref = bento_spec.model_ref(settings)
    assert isinstance(ref, bentoml.models.BentoModel) and str(ref.tag) == MODEL_TAG
    assert bento_spec.envs(settings) == []


def test_hub_model_is_a_reference_and_needs_hf_token() -> None:
    settings = load_settings(model_id=LLAMA)
    ref = bento_spec.model_ref(settings)  # a reference only: nothing is fetched here
    assert isinstance(ref, bentoml.models.HuggingFaceModel)
    assert (ref.model_id, ref.revision, ref.exclude) == (LLAMA, "main", ["*.pth", "*.pt"])
    assert bento_spec.envs(settings) == [{"name": "HF_TOKEN"}]


def test_resources_follow_gpu_settings() -> None:
    assert bento_spec.resources(load_settings()) == {"gpu": 1, "gpu_type": "nvidia-l4"}
    settings = load_settings(gpu_count=2, gpu_type="nvidia-a100-80gb")
    assert bento_spec.resources(settings) == {"gpu": 2, "gpu_type": "nvidia-a100-80gb"}


def test_model_folder_is_served_from_disk_and_needs_no_token(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    settings = load_settings(model_id=str(tmp_path))
    ref = bento_spec.model_ref(settings)
    # service.py serves str(getattr(model, "path", model)): the folder itself, not a copy
    # (bentoml build alone copies it into the store: tests/test_e2e_bento.py).
    resolved = ref.resolve()
    assert str(getattr(resolved, "path", resolved)) == str(tmp_path)
    assert bento_spec.envs(settings) == []


def test_build_with_an_unknown_engine_flag_fails_with_vllms_message(tmp_path: Path) -> None:
    # Fails while the service is imported, before the model or requirements are touched.
    result = bentos.run_bentoml("bentoml build --arg 'engine_args=--max-num-seqs 8 --no-such-flag'",
                                bentos.bentoml_env(tmp_path))
    assert result.returncode != 0
    assert "unrecognized arguments: --no-such-flag" in result.stdout + result.stderr
    assert not (tmp_path / "bentos" / bentos.BENTO_NAME).exists()


def test_model_routes_are_left_out_of_bentomls_per_message_tracing() -> None:
    from opentelemetry.util.http import ExcludeList

    excluded = ExcludeList(bento_spec.tracing()["excluded_urls"])
    for path in ("/v1/chat/completions", "/v1/models", "/generate", "/tokenize", "/detokenize"):
        assert excluded.url_disabled(f"http://127.0.0.1:3000{path}")
    for path in ("/readyz", "/livez", "/metrics", "/", "/chat"):
        assert not excluded.url_disabled(f"http://127.0.0.1:3000{path}")


def test_bentomls_time_limit_falls_after_the_gates() -> None:
    for limit in (10.0, 300.0, 3600.0):
        assert bento_spec.traffic(load_settings(request_timeout_s=limit))["timeout"] > limit + 5


def test_lora_adapters_are_models_the_service_class_holds(tmp_path: Path) -> None:
    """BentoML records the models a Bento carries from the service class's attributes."""
    adapter = tmp_path / "pirate"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    refs = bento_spec.adapter_refs(load_settings(lora_modules=f"pirate={adapter}"))
    assert [ref.folder for ref in refs.values()] == [adapter]
    assert [ref.tag.name for ref in refs.values()] == ["pirate"]

    @bento_spec.holding(refs)
    class Service:
        pass

    assert all(getattr(Service, name) is ref for name, ref in refs.items())
    assert bento_spec.adapter_refs(load_settings()) == {}
