"""LoRA adapters served beside the packaged model: two PEFT adapters made here (random,
non-zero weights) served with ``LLM_LORA_MODULES`` under names of their own, and
``LLM_MAX_LORAS=2`` so one batch may use both (one more engine, hence ``slow``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests import served
from tests.conftest import MODEL
from tests.metrics import scrape
from vllm_bento.packaged_model import ensure_packaged_model

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ADAPTERS = ("pirate", "other")
MAX_LORAS = 2
QUESTION = [{"role": "user", "content": "Who are you?"}]


def make_adapter(base: Path, folder: Path, seed: int) -> None:
    """A rank-8 LoRA adapter on q_proj and v_proj with random A and B: PEFT's default
    initialisation zeroes B, which would leave the model's answers unchanged."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                        init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), config).save_pretrained(folder)


@pytest.fixture(scope="module")
def adapter_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = Path(ensure_packaged_model().path)
    root = tmp_path_factory.mktemp("adapters")
    folders = {name: root / name for name in ADAPTERS}
    for seed, folder in enumerate(folders.values()):
        make_adapter(base, folder, seed)
    return folders


@pytest.fixture(scope="module")
def lora_server(adapter_folders: dict[str, Path]) -> Iterator[served.Served]:
    modules = ",".join(f"{name}={folder}" for name, folder in adapter_folders.items())
    server = served.start("lora", {"LLM_LORA_MODULES": modules, "LLM_MAX_LORAS": str(MAX_LORAS)})
    try:
        served.wait_ready(server)
        yield server
    finally:
        served.stop(server)


def client(server: served.Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0,
                         timeout=300)


def chat(server: served.Served, model: str) -> str:
    reply = client(server).chat.completions.create(
        model=model, messages=QUESTION, max_tokens=24, temperature=0)
    assert reply.model == model
    return reply.choices[0].message.content or ""


def complete(server: served.Served, model: str) -> str:
    reply = client(server).completions.create(
        model=model, prompt="The capital of France is", max_tokens=16, temperature=0)
    return reply.choices[0].text


def test_models_lists_the_model_and_each_adapter(lora_server: served.Served,
                                                 adapter_folders: dict[str, Path]) -> None:
    models = {model.id: model.model_extra or {} for model in client(lora_server).models.list()}
    assert set(models) == {MODEL, *ADAPTERS}
    for name in adapter_folders:
        # No file system path: vLLM's own root would be the adapter's folder.
        assert (models[name]["root"], models[name]["parent"]) == (name, MODEL)
        assert client(lora_server).models.retrieve(name).id == name
    listed = httpx.get(f"{lora_server.url}/v1/models", timeout=30).text
    assert not [str(f) for f in adapter_folders.values() if str(f) in listed]


def test_each_adapter_changes_the_greedy_chat_answer(lora_server: served.Served) -> None:
    base = chat(lora_server, MODEL)
    assert chat(lora_server, MODEL) == base  # greedy: a difference below is the adapter's
    answers = {name: chat(lora_server, name) for name in ADAPTERS}
    assert all(answer and answer != base for answer in answers.values()), (base, answers)
    assert answers["pirate"] != answers["other"]


def test_each_adapter_changes_the_greedy_completion(lora_server: served.Served) -> None:
    base = complete(lora_server, MODEL)
    assert complete(lora_server, MODEL) == base
    for name in ADAPTERS:
        assert complete(lora_server, name) != base, name


def test_the_engine_takes_max_loras_adapters_per_batch(lora_server: served.Served) -> None:
    chat(lora_server, ADAPTERS[0])  # vLLM sets its LoRA gauge as the engine steps
    assert scrape(lora_server.url, "vllm:lora_requests_info", max_lora=str(MAX_LORAS))


def test_unknown_model_is_404_in_openai_shape(lora_server: served.Served) -> None:
    r = httpx.post(f"{lora_server.url}/v1/chat/completions", timeout=60,
                   json={"model": "no-such-adapter", "messages": QUESTION, "max_tokens": 8})
    assert r.status_code == 404, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "no-such-adapter" in error["message"]


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/load_lora_adapter", {"lora_name": "third", "lora_path": "/tmp"}),
    ("/v1/unload_lora_adapter", {"lora_name": "pirate"}),
])
def test_runtime_adapter_routes_are_off_by_default(lora_server: served.Served, path: str,
                                                   body: dict[str, str]) -> None:
    r = httpx.post(f"{lora_server.url}{path}", json=body, timeout=60)
    assert r.status_code == 404, r.text
    assert chat(lora_server, "pirate")  # still served
