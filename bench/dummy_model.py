"""A config-only model folder with Llama 3.1 8B's architecture, for benchmarking a GPU without
the real weights: vLLM serves it with random weights (``--load-format dummy``), at the real
model's size and speed, answering gibberish.

    python -m bench.dummy_model OUT_DIR   # then:
    LLM_MODEL_ID=OUT_DIR LLM_ENGINE_ARGS="--load-format dummy" bentoml serve service:VLLM

The architecture is Meta's published ``config.json`` of Llama-3.1-8B-Instruct; the vocabulary
and special tokens are those of the packaged SmolLM2 tokenizer, whose files are copied in (the
Llama tokenizer is gated on the hub, out of reach here). The smaller vocabulary makes the
embedding and output head 49152 x 4096 instead of 128256 x 4096: 7.38B parameters, not 8.03B
(``param_count``), which the benchmark's bandwidth floor takes from ``weight_bytes``.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LLAMA_31_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 128256,  # replaced by the tokenizer's
}
"""meta-llama/Llama-3.1-8B-Instruct's ``config.json``, less its token ids."""

TOKEN_KEYS = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")
"""What the folder takes from the tokenizer's model rather than from Llama."""

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json")
"""Copied from the tokenizer's model folder where present (transformers 5 writes no
``special_tokens_map.json``)."""

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4}


def dummy_config(tokenizer_config: Mapping[str, Any]) -> dict[str, Any]:
    """Llama 3.1 8B's config with the vocabulary size and special token ids of the model whose
    ``config.json`` is ``tokenizer_config``."""
    return {**LLAMA_31_8B, **{k: tokenizer_config[k] for k in TOKEN_KEYS if k in tokenizer_config}}


def param_count(config: Mapping[str, Any]) -> int:
    """Parameters of a Llama-style decoder with this ``config.json``: embedding, per layer the
    q/k/v/o projections, the gated MLP and two RMS norms, the final norm, and the output head
    unless it is tied to the embedding."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv_heads = config.get("num_key_value_heads", heads)
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp = 3 * hidden * config["intermediate_size"]
    layer = attention + mlp + 2 * hidden
    embedding = config["vocab_size"] * hidden
    head = 0 if config.get("tie_word_embeddings", False) else embedding
    return embedding + config["num_hidden_layers"] * layer + hidden + head


def weight_bytes(config: Mapping[str, Any]) -> int:
    """Bytes of the weights in the checkpoint's dtype (``torch_dtype``, else ``dtype``;
    bfloat16 and float16 are 2 bytes a parameter)."""
    dtype = config.get("torch_dtype") or config.get("dtype") or "bfloat16"
    return param_count(config) * DTYPE_BYTES[dtype]


def write_dummy_model(out_dir: Path, tokenizer_model: Path) -> dict[str, Any]:
    """Write the config-only folder to ``out_dir`` (created if missing), taking the tokenizer
    from the model folder ``tokenizer_model``; returns the config written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = dummy_config(json.loads((tokenizer_model / "config.json").read_text()))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (tokenizer_model / name).is_file():
            shutil.copyfile(tokenizer_model / name, out_dir / name)
    return config


def main(argv: list[str]) -> None:
    from vllm_bento.packaged_model import ensure_packaged_model

    if len(argv) != 1:
        sys.exit("usage: python -m bench.dummy_model OUT_DIR")
    out_dir = Path(argv[0]).resolve()
    config = write_dummy_model(out_dir, Path(ensure_packaged_model().path))
    print(f"{out_dir}: {config['architectures'][0]}, {param_count(config) / 1e9:.2f}B parameters,"
          f" {weight_bytes(config) / 1e9:.2f} GB of {config['torch_dtype']} weights")
    print(f'serve it: LLM_MODEL_ID={out_dir} LLM_ENGINE_ARGS="--load-format dummy" '
          "bentoml serve service:VLLM")


if __name__ == "__main__":
    main(sys.argv[1:])
