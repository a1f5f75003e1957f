"""The Hugging Face transformers baseline: ``model.generate`` on the same checkpoint, in the
engine's dtype, greedy, batched: at concurrency C the prompts go C at a time, one batch after
the other (static batching, what ``generate`` offers), each answer exactly ``output_len`` tokens
(``min_new_tokens``, the counterpart of ``ignore_eos``).

A request's clock starts when its batch starts (chat template and tokenisation included, as a
server does them); its first and last tokens are the first and last decoding steps of its batch.

Run in a process of its own so that its memory can be measured apart:

    python -m bench.hf_runner spec.json result.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


class StepClock:
    """A ``generate`` streamer that notes when each decoding step produced its tokens."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # the first call carries the prompt, not a new token
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def load(model_path: str, dtype: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
    model.eval()
    return tokenizer, model


def run_batch(tokenizer: Any, model: Any, prompts: list[str],
              output_len: int) -> list[dict[str, Any]]:
    """Generate for one batch; one record per prompt (times in seconds from the batch start)."""
    import torch

    start = time.perf_counter()
    inputs = tokenizer.apply_chat_template(
        [[{"role": "user", "content": p}] for p in prompts], add_generation_prompt=True,
        padding=True, return_tensors="pt", return_dict=True,
    )
    clock = StepClock()
    with torch.inference_mode():
        out = model.generate(
            **inputs, max_new_tokens=output_len, min_new_tokens=output_len, do_sample=False,
            streamer=clock, pad_token_id=tokenizer.pad_token_id,
        )
    new_tokens = out.shape[1] - inputs["input_ids"].shape[1]
    prompt_lens = inputs["attention_mask"].sum(dim=1).tolist()
    return [{"ttft": clock.times[0] - start, "latency": clock.times[-1] - start,
             "output_tokens": int(new_tokens), "prompt_tokens": int(n)} for n in prompt_lens]


def run(tokenizer: Any, model: Any, prompts: list[str], concurrency: int,
        output_len: int) -> dict[str, Any]:
    """All ``prompts``, ``concurrency`` at a time; the run's records and wall time."""
    start = time.perf_counter()
    records: list[dict[str, Any]] = []
    for i in range(0, len(prompts), concurrency):
        records += run_batch(tokenizer, model, prompts[i:i + concurrency], output_len)
    return {"records": records, "duration_s": time.perf_counter() - start}


def main(spec_file: str, result_file: str) -> None:
    import torch
    import transformers

    spec = json.loads(Path(spec_file).read_text())
    torch.set_num_threads(spec["threads"])
    loaded = time.perf_counter()
    tokenizer, model = load(spec["model_path"], spec["dtype"])
    meta = {"load_s": time.perf_counter() - loaded, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "attn_implementation": model.config._attn_implementation}
    run_batch(tokenizer, model, spec["warmup_prompts"], 8)  # first-call costs, not timed
    results = []
    for job in spec["runs"]:
        result = run(tokenizer, model, job["prompts"], job["concurrency"], spec["output_len"])
        results.append({**{k: v for k, v in job.items() if k != "prompts"}, **result})
        print(f"transformers c={job['concurrency']} repeat={job['repeat']}: "
              f"{result['duration_s']:.1f} s", flush=True)
    Path(result_file).write_text(json.dumps({"meta": meta, "runs": results}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
