"""What only a GPU shows: the engine on CUDA in half precision, and tensor parallelism over the
GPUs BentoML assigns, stopping with no process left. Skipped on a machine without enough GPUs
(CI runs on a CPU); run on a GPU host as the README's "Testing on a GPU" says."""

from __future__ import annotations

import subprocess

import openai
import psutil
import pytest

from tests import served
from tests.conftest import MODEL

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def gpu_compute_pids() -> set[int]:
    """PIDs with a CUDA context, on any GPU."""
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30).stdout
    return {int(line) for line in out.split() if line.strip().isdigit()}


def answer(url: str) -> str:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=120)
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=16,
        temperature=0)
    return reply.choices[0].message.content or ""


@pytest.mark.gpu(1)
def test_the_engine_runs_on_the_gpu_in_half_precision(server: served.Served) -> None:
    assert answer(server.url)
    log = server.log.read_text(errors="replace")
    assert "dtype=torch.float16" in log, "the GPU default dtype is half, as in the example"
    tree = {p.pid for p in served.tree(server.process.pid)}
    assert tree & gpu_compute_pids(), "no process of the server holds a CUDA context"


@pytest.mark.gpu(2)
def test_two_gpus_shard_the_model_and_stop_with_no_process_left() -> None:
    """``LLM_GPU_COUNT=2``: BentoML gives the worker both GPUs (``CUDA_VISIBLE_DEVICES``) and
    the engine shards over them (tensor parallel 2), NVLink multicast off."""
    with served.serving("tp2", env={"LLM_GPU_COUNT": "2"}) as server:
        assert answer(server.url)
        log = server.log.read_text(errors="replace")
        assert "tensor_parallel_size=2" in log
        procs = served.tree(server.process.pid)
        holders = {p.pid for p in procs} & gpu_compute_pids()
        assert len(holders) >= 2, f"expected a worker per GPU, CUDA contexts in {holders}"
        envs = [p.environ() for p in procs if p.pid in holders]
        assert all(e.get("NCCL_NVLS_ENABLE") == "0" for e in envs)
    left = [p for p in procs if served_alive(p)]
    assert not left, f"left behind: {[(p.pid, p.name()) for p in left]}"
    assert not (holders & gpu_compute_pids())


def served_alive(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
