"""How fast vLLM's own CPU matmul kernel can run one decode step's weights, with nothing else:
every weight matrix of the model (read from its ``config.json``) multiplied by one token's
activations through ``vllm._custom_ops.onednn_mm`` (what vLLM's CPU linear layers call on a CPU
without AMX), on one thread, as vLLM's engine computes here.

It separates the two reasons batch-1 decode can fall short of the bandwidth floor: the kernel
reading weights slower than the memory can deliver them, and everything else in a step.

Run in a process of its own (it loads vLLM's kernels and sets torch's thread count):

    python -m bench.gemv <model_path> <dtype> [<dtype> ...]   # prints JSON
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

REPEATS = 10


def weight_shapes(config: dict[str, Any]) -> list[tuple[int, int]]:
    """(out, in) of each matrix a Llama-style decoder reads per token, as vLLM fuses them:
    qkv, o, gate_up and down per layer, then the output head."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv_heads = config.get("num_key_value_heads", heads)
    inter = config["intermediate_size"]
    layer = [((heads + 2 * kv_heads) * head_dim, hidden), (hidden, heads * head_dim),
             (2 * inter, hidden), (hidden, inter)]
    return layer * config["num_hidden_layers"] + [(config["vocab_size"], hidden)]


def step_ms(shapes: list[tuple[int, int]], dtype_name: str, batch: int = 1) -> dict[str, float]:
    """Milliseconds per decode step of the matmuls alone (best of ``REPEATS``), and the weight
    bytes they stream per second."""
    import torch
    from vllm import _custom_ops as ops

    dtype = getattr(torch, dtype_name)
    weights = [torch.randn(n, k).to(dtype) for n, k in shapes]
    handles = [ops.create_onednn_mm(w.t(), 32) for w in weights]
    inputs = [torch.randn(batch, w.shape[1]).to(dtype) for w in weights]
    nbytes = sum(w.numel() * w.element_size() for w in weights)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(REPEATS + 2):  # the first passes fault pages in and warm oneDNN up
            start = time.perf_counter()
            for handle, x in zip(handles, inputs, strict=True):
                ops.onednn_mm(handle, x, None)
            best = min(best, time.perf_counter() - start)
    return {"ms_per_step": best * 1e3, "weight_gb_s": nbytes / best / 1e9,
            "weight_bytes": nbytes}


def main(model_path: str, dtypes: list[str]) -> None:
    import torch

    from vllm_bento.vllm_cli import answer_vllm_version

    torch.set_num_threads(1)
    # As `python -m vllm_bento.vllm_cli` does: on the CPU build, vLLM's platform detection
    # picks its kernels from the "+cpu" version it is answered.
    answer_vllm_version()
    shapes = weight_shapes(json.loads((Path(model_path) / "config.json").read_text()))
    print(json.dumps({d: step_ms(shapes, d) for d in dtypes}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
