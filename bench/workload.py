"""What every system is asked to do: the model, the engine settings, and the prompts.

The prompts are made by vLLM's own random dataset (``vllm.benchmarks.datasets.RandomDataset``),
the one ``vllm bench serve --dataset-name random`` uses, so for the same seed our clients send
exactly the text vLLM's client sends, and every system gets the same prompts run for run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from vllm_bento import hardware
from vllm_bento.engine_values import EngineConfig
from vllm_bento.packaged_model import ensure_packaged_model
from vllm_bento.settings import engine_config, load_settings

DTYPE_BYTES = {"bfloat16": 2, "half": 2, "float16": 2, "float32": 4}
WARMUP_SEED = 999_999  # prompts no measured run uses


@dataclass(frozen=True)
class Workload:
    """Fixed prompt and answer lengths in tokens (answers run to the end: EOS is ignored)."""

    input_len: int
    output_len: int


def seed_for(concurrency: int, repeat: int) -> int:
    """The prompts of one repeat of one level: the same for every system."""
    return concurrency * 100 + repeat


@cache
def model_path() -> str:
    """The packaged default model's checkpoint folder (converted into the store if missing)."""
    return str(ensure_packaged_model().path)


def engine(enforce_eager: bool | None = None) -> EngineConfig:
    """The engine configuration the service would use on this machine, from the environment."""
    overrides = {} if enforce_eager is None else {"enforce_eager": enforce_eager}
    return engine_config(load_settings(**overrides), hardware.detect())


@cache
def tokenizer() -> Any:
    """The model's tokenizer, loaded the way ``vllm bench serve`` loads it."""
    from vllm.tokenizers import get_tokenizer

    return get_tokenizer(model_path())


def prompts(workload: Workload, count: int, seed: int) -> list[str]:
    """``count`` prompts of ``workload.input_len`` tokens, as vLLM's random dataset makes them."""
    from vllm.benchmarks.datasets.datasets import RandomDataset

    requests = RandomDataset(random_seed=seed).sample(
        tokenizer=tokenizer(),
        num_requests=count,
        prefix_len=0,
        input_len=workload.input_len,
        output_len=workload.output_len,
        range_ratio=0.0,
    )
    return [str(r.prompt) for r in requests]


def chat_prompt_tokens(prompt: str) -> int:
    """Tokens the engine reads for ``prompt`` sent as one user message (chat template included)."""
    ids = tokenizer().apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True,
        return_dict=False,
    )
    return len(ids)


def count_tokens(text: str) -> int:
    """Tokens in generated text, counted as ``vllm bench serve`` does when a server gives no
    usage figure (re-tokenised, no special tokens)."""
    return len(tokenizer()(text, add_special_tokens=False).input_ids)


def weight_bytes(path: str, dtype: str) -> int:
    """Bytes of weights one decode step reads: every parameter once, in the engine's dtype (the
    tied embedding is stored and read once, as the output projection).

    Raises:
        KeyError: ``dtype`` is not a known floating-point type.
    """
    from safetensors import safe_open

    params = 0
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), "np") as weights:
            params += sum(math.prod(weights.get_slice(k).get_shape()) for k in weights.keys())
    return params * DTYPE_BYTES[dtype]
