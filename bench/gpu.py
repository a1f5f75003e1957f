"""``python -m bench.gpu``: the GPU benchmark (``make bench-gpu`` on a GPU host).

For each model, one system at a time on the one GPU: raw ``vllm serve`` with the service's
exact engine arguments, then the service (``bentoml serve``). Each is started, timed to ready,
warmed up, and driven at every concurrency level, ``--repeats`` times:

- ``raw-chat`` / ``service-chat``: ``vllm bench serve`` on ``/v1/chat/completions`` (random
  prompts, fixed lengths, EOS ignored), failures counted by kind (429s apart);
- ``service-generate`` / ``service-chat-eos``: the same prompts to ``/generate`` and to
  ``/v1/chat/completions`` with EOS honoured (``/generate`` has no ``ignore_eos``), through
  ``bench.clients``' one request loop, so the two compare like for like.

With ``--cold`` each system starts with its compile caches cleared (``COMPILE_CACHES``, under
``$HOME`` and ``$TORCHINDUCTOR_CACHE_DIR``: give concurrent runs their own), and after both
have run, each starts once more with the caches warm, for ready time only: start-ups compare
cold with cold and warm with warm. ``--merge A B ... --out C`` joins the result files of runs
made side by side (one model each, one GPU each) into one.

Models: ``smollm2`` (the packaged model in fp16: the front end is the bottleneck) and
``llama8b`` (the Llama 3.1 8B architecture with random weights, ``--load-format dummy``, from
``bench.dummy_model``: GPU-bound). Also recorded: start-up to ready (caches as they are: say so
in the report), peak GPU memory per system (``nvidia-smi``), the H200's measured memory
bandwidth and the batch-1 decode floor it implies for the 8B-class model.

Writes one JSON file (``--out``) after every model, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench import clients, meta
from bench import workload as wl
from bench.metrics import RunMetrics, over_repeats, summarize
from launch import ROOT, Served, service_engine_args, start_raw, stop, wait_ready
from launch import start as start_service
from vllm_bento.settings import load_settings

logger = logging.getLogger("bench.gpu")

LEVELS = (1, 16, 64, 256, 1024)
PROMPTS = {1: 8, 16: 48, 64: 128, 256: 512, 1024: 1024}
WORKLOAD = wl.Workload(input_len=128, output_len=128)
READY_TIMEOUT_S = 900.0
COMPILE_CACHES = ("~/.cache/vllm", "~/.cache/flashinfer", "~/.triton", "~/.cache/triton")
"""vLLM's torch.compile artifacts, FlashInfer's JIT kernels and Triton's; TorchInductor's own
cache is ``$TORCHINDUCTOR_CACHE_DIR`` (``/tmp/torchinductor_$USER`` unless set)."""


@dataclass(frozen=True)
class Model:
    """A model under test: the ``LLM_*`` settings that select it, and its served name."""

    name: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def served_name(self) -> str:
        return self.env.get("LLM_SERVED_MODEL_NAME", load_settings().served_name)


def models(dummy_dir: Path) -> dict[str, Model]:
    return {
        "smollm2": Model("smollm2"),
        "llama8b": Model("llama8b", {
            "LLM_MODEL_ID": str(dummy_dir), "LLM_SERVED_MODEL_NAME": "llama8b-dummy",
            "LLM_ENGINE_ARGS": "--load-format dummy"}),
    }


class GpuMemory:
    """Peak used memory of the GPUs this process may use (``CUDA_VISIBLE_DEVICES``, else
    all), sampled from ``nvidia-smi`` in a thread."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.peak_mib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def used_mib() -> int:
        ids = os.environ.get("CUDA_VISIBLE_DEVICES")
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,"
                              "nounits", *([f"--id={ids}"] if ids else [])],
                             capture_output=True, text=True, timeout=10).stdout
        return sum(int(x) for x in out.split())

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mib = max(self.peak_mib, self.used_mib())

    def __enter__(self) -> GpuMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def clear_compile_caches() -> None:
    inductor = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    for path in (*COMPILE_CACHES, *([inductor] if inductor else [])):
        shutil.rmtree(Path(path).expanduser(), ignore_errors=True)


def refused(failures: list[str]) -> int:
    """Failures that were the service's 429 (vLLM's client keeps the HTTP reason only)."""
    return sum(1 for f in failures if "429" in f or "Too Many Requests" in f)


def run_level(system: str, base_url: str, model: Model, level: int, repeat: int,
              scratch: Path) -> dict[str, Any]:
    """One run of ``system`` at ``level``; its metrics and failures."""
    seed = wl.seed_for(level, repeat)
    count = PROMPTS[level]
    if system.endswith("-chat"):
        result_file = scratch / f"{system}-{level}-{repeat}.json"
        argv = clients.vllm_bench_argv(base_url, model.served_name, wl.model_path(), WORKLOAD,
                                       level, count, seed, result_file)
        result = clients.vllm_bench_serve(argv, scratch / f"{system}-{level}-{repeat}.log")
    else:
        prompts = wl.prompts(WORKLOAD, count, seed)
        if system == "service-generate":
            result = clients.generate_run(base_url, prompts, WORKLOAD, level)
        else:
            result = clients.chat_run(base_url, model.served_name, prompts, WORKLOAD, level)
    metrics = asdict(summarize(result.records, result.duration_s, level)) if result.records \
        else None
    return {"metrics": metrics, "failures": len(result.failures),
            "refused_429": refused(result.failures), "failure_sample": result.failures[:3]}


def drive(systems: tuple[str, ...], base_url: str, model: Model, repeats: int,
          scratch: Path) -> dict[str, Any]:
    """Every system at every level, ``repeats`` times; per system and level the runs and the
    median and spread of their metrics."""
    warm = clients.vllm_bench_argv(base_url, model.served_name, wl.model_path(), WORKLOAD, 16,
                                   32, wl.WARMUP_SEED, scratch / "warmup.json")
    clients.vllm_bench_serve(warm, scratch / "warmup.log")  # CUDA graphs, caches, connections
    out: dict[str, Any] = {s: {} for s in systems}
    for repeat in range(repeats):
        for level in LEVELS:
            for system in systems:
                run = run_level(system, base_url, model, level, repeat, scratch)
                logger.info("%s %s c=%d r=%d: %s", model.name, system, level, repeat,
                            {k: round(v, 2) for k, v in (run["metrics"] or {}).items()
                             if k in ("output_tok_s", "ttft_p50_ms", "tpot_p50_ms")}
                            | {"failures": run["failures"]})
                out[system].setdefault(str(level), {"runs": []})["runs"].append(run)
    for system in systems:
        for entry in out[system].values():
            good = [r["metrics"] for r in entry["runs"] if r["metrics"] is not None]
            if good:
                entry["summary"] = {k: asdict(v) for k, v in
                                    over_repeats([RunMetrics(**m) for m in good]).items()}
    return out


def serve_and_drive(kind: str, model: Model, repeats: int, scratch: Path,
                    cold: bool, raw_extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Start one system for ``model``, time it to ready, drive it (``repeats`` > 0), stop it.
    ``raw_extra``: more ``vllm serve`` flags for raw (``--api-server-count 2``)."""
    if cold:
        clear_compile_caches()
    env = {**os.environ, **model.env}
    os.environ.update(model.env)  # service_engine_args reads LLM_* from this process
    served: Served
    with GpuMemory() as memory:
        if kind == "raw":
            served = start_raw(f"gpu-{model.name}",
                               [*service_engine_args(model.env.get("LLM_MODEL_ID")),
                                *raw_extra], env)
            ready_path = "/health"
            systems: tuple[str, ...] = ("raw-chat",)
        else:
            served = start_service(f"gpu-{model.name}", env)
            ready_path = "/readyz"
            # /generate against chat with EOS honoured where the front end is the bottleneck;
            # the 8B-class model is GPU-bound, and the GPU hour is short.
            systems = ("service-chat",) if model.name == "llama8b" else (
                "service-chat", "service-generate", "service-chat-eos")
        try:
            ready_s = wait_ready(served, READY_TIMEOUT_S, ready_path, 0.25)
            logger.info("%s %s ready in %.1f s (caches %s)", model.name, kind, ready_s,
                        "cleared" if cold else "as left")
            results = drive(systems, served.url, model, repeats, scratch) if repeats else {}
        finally:
            exit_code = stop(served)
        for key in model.env:
            os.environ.pop(key, None)
    return {"ready_s": ready_s, "cold_caches": cold, "peak_gpu_mib": memory.peak_mib,
            "exit_code": exit_code, "log": str(served.log), "systems": results}


def merge(paths: list[Path]) -> dict[str, Any]:
    """Result files of side-by-side runs (one model each) as one: the first file's machine
    and settings, every file's models, and per file the GPU it ran on."""
    results = [json.loads(p.read_text()) for p in paths]
    merged = {**results[0], "models": {}}
    for result in results:
        for name, entry in result["models"].items():
            merged["models"][name] = {**entry, "membw_gbs": result["membw_gbs"],
                                      "repeats": result["repeats"],
                                      "cuda_visible_devices": result.get("cuda_visible_devices"),
                                      "gpu_memory_utilization": result.get(
                                          "gpu_memory_utilization")}
    return merged


def gpu_bandwidth_gbs(gib: int = 4, passes: int = 20) -> float:
    """Device memory bandwidth, GB/s: a ``gib``-GiB copy (read + write) timed on the GPU."""
    import torch

    src = torch.empty(gib * 2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(passes):
        dst.copy_(src)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    del src, dst
    torch.cuda.empty_cache()
    return 2 * gib * 2**30 * passes / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__)
    parser.add_argument("--models", default="smollm2,llama8b")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/gpu-h200.json")
    parser.add_argument("--dummy-dir", type=Path, default=Path("/tmp/llama8b-dummy"))
    parser.add_argument("--cold", action="store_true", help="clear compile caches before "
                        "each start, then start each system once more warm (start-ups then "
                        "compare cold with cold and warm with warm)")
    parser.add_argument("--merge", type=Path, nargs="+", help="join these result files into "
                        "--out and exit")
    parser.add_argument("--raw-extra", default="", help="more `vllm serve` flags for raw, "
                        "as one string (\"--api-server-count 2\"): compare the service with "
                        "vLLM's best front end, not only its default")
    args = parser.parse_args()
    raw_extra = tuple(shlex.split(args.raw_extra))
    if args.merge:
        args.out.write_text(json.dumps(merge(args.merge), indent=1))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    result: dict[str, Any] = {"machine": meta.machine(ROOT), "workload": asdict(WORKLOAD),
                              "levels": LEVELS, "prompts": PROMPTS, "repeats": args.repeats,
                              "gpu": gpu_name(), "models": {},
                              "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                              "gpu_memory_utilization": os.environ.get(
                                  "LLM_GPU_MEMORY_UTILIZATION")}
    result["machine"]["commit"] = os.environ.get("BENCH_COMMIT", result["machine"]["commit"])
    result["membw_gbs"] = gpu_bandwidth_gbs()
    logger.info("GPU copy bandwidth %.0f GB/s", result["membw_gbs"])
    for name in args.models.split(","):
        model = models(args.dummy_dir)[name]
        scratch = ROOT / "bench/results/tmp/gpu" / name  # side-by-side runs write apart
        scratch.mkdir(parents=True, exist_ok=True)
        entry = result["models"].setdefault(name, {"env": model.env})
        if name == "llama8b":
            from bench.dummy_model import param_count, weight_bytes, write_dummy_model

            config = write_dummy_model(args.dummy_dir, Path(wl.model_path()))
            # fp16 serving reads every weight once per decode step: the batch-1 floor.
            entry["params"] = param_count(config)
            entry["weight_bytes"] = weight_bytes(config)
            entry["tpot_floor_ms"] = weight_bytes(config) / (result["membw_gbs"] * 1e9) * 1e3
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for kind in ("raw", "service"):
            entry[kind] = guarded(partial(serve_and_drive, kind, model, args.repeats, scratch,
                                          args.cold, raw_extra))
            entry[kind]["raw_extra"] = list(raw_extra) if kind == "raw" else None
            args.out.write_text(json.dumps(result, indent=1))
        if args.cold:  # the same starts again, caches as the cold starts left them
            for kind in ("raw", "service"):
                warm = guarded(partial(serve_and_drive, kind, model, 0, scratch, False))
                entry[kind]["warm_ready_s"] = warm.get("ready_s")
                args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({"wrote": str(args.out)}))


def guarded(step: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A step's result, or its error: one failed system must not lose the others' figures."""
    try:
        return step()
    except Exception as exc:  # noqa: BLE001 - recorded in the result and logged
        logger.exception("step failed")
        return {"error": f"{type(exc).__name__}: {exc}"}


def gpu_name() -> str:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                          "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
    return out.stdout.strip()  # one line per GPU


if __name__ == "__main__":
    main()
