"""What the service declares for the Bento, per settings (the builds themselves are in
test_bento_build.py and test_e2e_bento.py)."""

from __future__ import annotations

import bentoml

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
