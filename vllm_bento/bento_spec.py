"""What a Bento is made of for given settings: the model it references, the GPUs it asks
BentoCloud for, the environment its replicas must be given, and its image.

``service.py`` reads these at import, which is when ``bentoml build`` (with its ``--arg``
values) and ``bentoml serve <bento>`` (with the arguments kept in the Bento) evaluate the
``@bentoml.service`` decorator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias, TypeVar

import bentoml

from vllm_bento.model_folder import FolderModel
from vllm_bento.packaged_model import MODEL_TAG
from vllm_bento.settings import Settings

REQUIREMENTS = "requirements.txt"
"""The image's Python requirements: the CUDA build of vLLM, pinned to the release we wrap."""

HF_TOKEN = "HF_TOKEN"
T = TypeVar("T")

ModelRef: TypeAlias = bentoml.models.BentoModel | bentoml.models.HuggingFaceModel


def model_ref(settings: Settings) -> ModelRef:
    """The packaged SmolLM2 from the BentoML model store (travels inside the Bento), a Hugging
    Face model by reference (the Bento records its revision; replicas download it at start), or
    a model folder on disk (``vllm_bento.model_folder``): served from where it is, and copied
    into the model store by ``bentoml build`` so that the Bento carries it.
    """
    if settings.uses_packaged_model:
        return bentoml.models.BentoModel(MODEL_TAG)
    if (folder := settings.model_folder) is not None:
        return FolderModel.of(folder)
    # vLLM loads safetensors; the original PyTorch checkpoints would double the download.
    return bentoml.models.HuggingFaceModel(settings.model_id, exclude=["*.pth", "*.pt"])


def adapter_refs(settings: Settings) -> dict[str, FolderModel]:
    """The LoRA adapter folders as models a Bento carries (``bentoml build`` copies each into
    the model store, like a model folder), by the service attribute that holds each."""
    return {f"lora_adapter_{i}": FolderModel.of(folder)
            for i, folder in enumerate(settings.lora_module_map.values())}


def holding(refs: dict[str, FolderModel]) -> Callable[[type[T]], type[T]]:
    """A class decorator, under ``@bentoml.service``: puts ``refs`` on the service class, where
    BentoML looks for the models a Bento must carry (class attributes)."""
    def hold(cls: type[T]) -> type[T]:
        for name, ref in refs.items():
            setattr(cls, name, ref)
        return cls
    return hold


def resources(settings: Settings) -> dict[str, Any]:
    """The GPUs BentoCloud schedules a replica on; vLLM shards over all of them."""
    return {"gpu": settings.gpu_count, "gpu_type": settings.gpu_type}


def envs(settings: Settings) -> list[dict[str, str]]:
    """Environment variables a replica must be given. ``HF_TOKEN`` only for a Hugging Face model
    (gated ones such as Llama 3.1 need it to download): BentoML refuses to serve, and
    ``bentoml deploy`` to deploy, a Bento whose declared variable has no value, and the packaged
    model and a model folder need none."""
    on_hub = not settings.uses_packaged_model and settings.model_folder is None
    return [{"name": HF_TOKEN}] if on_hub else []


def image() -> bentoml.images.Image:
    """Python 3.11 with ``requirements.txt``, locked by ``bentoml build`` into the Bento."""
    return bentoml.images.Image(python_version="3.11").requirements_file(REQUIREMENTS)


TRAFFIC_TIMEOUT_MARGIN_S = 30.0
"""How much later than the gate BentoML's own time limit falls (the gate's abort wait, 5 s, and
room to send its 504)."""


def traffic(settings: Settings) -> dict[str, Any]:
    """BentoML's ``traffic`` options. The gate owns the time limit (``request_timeout_s``, an
    OpenAI-shaped 504 and a log line); BentoML's ``timeout`` (default 60 s, also BentoCloud's
    gateway timeout) is set past it so it never ends a request first and caps no setting."""
    return {"timeout": settings.request_timeout_s + TRAFFIC_TIMEOUT_MARGIN_S}


UNTRACED_PATHS = ("/v1/", "/generate", "/tokenize", "/detokenize")
"""URL patterns (regular expressions, searched in the full URL) BentoML does not trace."""


def tracing() -> dict[str, Any]:
    """BentoML's ``tracing`` options: the model routes are left out of its OpenTelemetry
    middleware, which opens a span for every message sent, so for every streamed token: on
    this service's path that was the largest cost per chunk (py-spy, ``make bench-layer``,
    docs/benchmarks.md). Engine-side traces come from vLLM's own ``--otlp-traces-endpoint``
    (``LLM_ENGINE_ARGS``)."""
    return {"excluded_urls": list(UNTRACED_PATHS)}
