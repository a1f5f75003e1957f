"""What only a GPU shows: the engine on CUDA in half precision, and tensor parallelism over the
GPUs BentoML assigns, stopping with no process left. Skipped on a machine without enough GPUs
(CI runs on a CPU); run on a GPU host as the README's "Testing on a GPU" says."""

from __future__ import annotations

import subprocess
from pathlib import Path

import openai
import psutil
import pytest

from bench.dummy_model import write_dummy_model
from tests import served
from tests.conftest import MODEL
from vllm_bento.packaged_model import ensure_packaged_model

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def gpu_compute_pids() -> set[int]:
    """PIDs with a CUDA context, on any GPU."""
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30).stdout
    return {int(line) for line in out.split() if line.strip().isdigit()}


def answer(url: str, model: str = MODEL) -> int:
    """Tokens generated for a short greedy chat request."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=120)
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=16,
        temperature=0)
    assert reply.usage is not None
    return reply.usage.completion_tokens


@pytest.mark.gpu(1)
def test_the_engine_runs_on_the_gpu_in_half_precision(server: served.Served) -> None:
    assert answer(server.url) > 0
    log = server.log.read_text(errors="replace")
    assert "dtype=torch.float16" in log, "the GPU default dtype is half, as in the example"
    tree = {p.pid for p in served.tree(server.process.pid)}
    assert tree & gpu_compute_pids(), "no process of the server holds a CUDA context"


@pytest.mark.gpu(2)
def test_two_gpus_shard_the_model_and_stop_with_no_process_left(tmp_path: Path) -> None:
    """``LLM_GPU_COUNT=2``: BentoML gives the worker both GPUs (``CUDA_VISIBLE_DEVICES``) and
    the engine shards over them (tensor parallel 2), NVLink multicast off even where the
    operator's environment turns it on (NCCL's own log says what it read).

    The model is the Llama 3.1 8B shape with random weights (``bench.dummy_model``): the
    packaged SmolLM2 has 9 attention heads, which vLLM cannot split over 2 GPUs."""
    folder = tmp_path / "llama8b-dummy"
    write_dummy_model(folder, Path(ensure_packaged_model().path))
    env = {"LLM_GPU_COUNT": "2", "LLM_MODEL_ID": str(folder),
           "LLM_SERVED_MODEL_NAME": "llama8b-dummy", "LLM_ENGINE_ARGS": "--load-format dummy",
           "NCCL_NVLS_ENABLE": "1", "NCCL_DEBUG": "INFO"}
    with served.serving("tp2", env=env) as server:
        assert answer(server.url, "llama8b-dummy") > 0
        log = server.log.read_text(errors="replace")
        assert "tensor_parallel_size=2" in log
        procs = served.tree(server.process.pid)
        holders = {p.pid for p in procs} & gpu_compute_pids()
        assert len(holders) >= 2, f"expected a worker per GPU, CUDA contexts in {holders}"
        # The BentoML worker sets the variable in its own environment after it started, which
        # /proc/<pid>/environ does not show; NCCL, in the tensor-parallel workers, reports it.
        nccl = [line for line in log.splitlines() if "NCCL_NVLS_ENABLE set by environment" in line]
        assert nccl, "NCCL did not report NCCL_NVLS_ENABLE (NCCL_DEBUG=INFO)"
        assert all(line.rstrip(". ").endswith("to 0") for line in nccl), nccl
    left = [p for p in procs if served_alive(p)]
    assert not left, f"left behind: {[(p.pid, p.name()) for p in left]}"
    assert not (holders & gpu_compute_pids())


def served_alive(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
