"""What a Bento is made of for given settings: the model it references, the GPUs it asks
BentoCloud for, the environment its replicas must be given, and its image.

``service.py`` reads these at import, which is when ``bentoml build`` (with its ``--arg``
values) and ``bentoml serve <bento>`` (with the arguments kept in the Bento) evaluate the
``@bentoml.service`` decorator.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import bentoml

from vllm_bento.packaged_model import MODEL_TAG
from vllm_bento.settings import Settings

REQUIREMENTS = "requirements.txt"
"""The image's Python requirements: the CUDA build of vLLM, pinned to the release we wrap."""

HF_TOKEN = "HF_TOKEN"

ModelRef: TypeAlias = bentoml.models.BentoModel | bentoml.models.HuggingFaceModel


def model_ref(settings: Settings) -> ModelRef:
    """The packaged SmolLM2 from the BentoML model store (travels inside the Bento), or a Hugging
    Face model by reference (the Bento records its revision; replicas download it at start)."""
    if settings.uses_packaged_model:
        return bentoml.models.BentoModel(MODEL_TAG)
    # vLLM loads safetensors; the original PyTorch checkpoints would double the download.
    return bentoml.models.HuggingFaceModel(settings.model_id, exclude=["*.pth", "*.pt"])


def resources(settings: Settings) -> dict[str, Any]:
    """The GPUs BentoCloud schedules a replica on; vLLM shards over all of them."""
    return {"gpu": settings.gpu_count, "gpu_type": settings.gpu_type}


def envs(settings: Settings) -> list[dict[str, str]]:
    """Environment variables a replica must be given. ``HF_TOKEN`` only for a Hugging Face model
    (gated ones such as Llama 3.1 need it to download): BentoML refuses to serve, and
    ``bentoml deploy`` to deploy, a Bento whose declared variable has no value, and the packaged
    model needs none."""
    return [] if settings.uses_packaged_model else [{"name": HF_TOKEN}]


def image() -> bentoml.images.Image:
    """Python 3.11 with ``requirements.txt``, locked by ``bentoml build`` into the Bento."""
    return bentoml.images.Image(python_version="3.11").requirements_file(REQUIREMENTS)
