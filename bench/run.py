"""The benchmark, start to end: bandwidth, both servers up (start-up timed), every level and
repeat run on every system, transformers, compiled start-ups, then the result file.

Runs on the two servers are interleaved (raw vLLM, the service's chat, its chat with the
requests ``/generate`` gets, its ``/generate``, in an order that rotates every repeat), so that
load from elsewhere on the machine, which drifts over minutes, falls on all of them alike rather
than on whichever ran last. Only one server is busy at a time: the other idles.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from bench import clients, membw, meta, servers
from bench import profile as prof
from bench import workload as wl
from bench.metrics import RequestRecord, summarize
from bench.plan import COMPILED_STARTUP_ESTIMATE_S, Plan
from vllm_bento.vllm_entrypoints import cli_args

logger = logging.getLogger("bench")

RESULTS = servers.ROOT / "bench" / "results"

# What each system is, for the report.
SYSTEMS = {
    "raw-chat": "raw `vllm serve`, /v1/chat/completions (reference)",
    "service-chat": "this service, /v1/chat/completions",
    "service-generate": "this service, /generate",
    "service-chat-eos": "this service, /v1/chat/completions, the requests /generate gets (EOS "
                        "ends answers), sent by vLLM's request function in our client loop",
    "transformers": "transformers `generate`, static batches",
}
Running = tuple[servers.Served, servers.MemorySampler]
# After its last request an engine's worker keeps spinning on its core for about a second
# (measured: 0.98 s of CPU in the next second, then idle), and both engines' workers are bound
# to the same core: without a pause, each run would start against the previous one's spin.
SETTLE_S = 3.0
SERVED = ("raw-chat", "service-chat", "service-chat-eos", "service-generate")


class Bench:
    """One benchmark run under ``plan``, writing into ``scratch`` and ``result_file``."""

    def __init__(self, plan: Plan, result_file: Path) -> None:
        self.plan = plan
        self.result_file = result_file
        self.scratch = RESULTS / "tmp" / plan.name
        self.started = time.monotonic()
        self.cfg = wl.engine()
        self.model_path = wl.model_path()
        self.result: dict[str, Any] = {
            "plan": asdict(self.plan), "systems": SYSTEMS, "runs": [], "memory": {},
            "startup_s": {}, "engine": asdict(self.cfg),
            "engine_args": cli_args(self.cfg, "<model>"),
        }

    # -- pieces -----------------------------------------------------------------------------

    def measure_bandwidth(self) -> None:
        logger.info("memory bandwidth")
        bw = membw.measure_all(self.plan.membw_mib * 2**20)
        per_token = wl.weight_bytes(self.model_path, self.cfg.dtype)
        self.result["bandwidth_gb_s"] = asdict(bw)
        self.result["weights"] = {"dtype": self.cfg.dtype, "bytes_per_token": per_token}
        logger.info("bandwidth %s GB/s; %.0f MB of weights per token", bw, per_token / 1e6)
        out = subprocess.run([servers.PYTHON, "-m", "bench.gemv", self.model_path, self.cfg.dtype],
                             cwd=servers.ROOT, capture_output=True, text=True, check=True).stdout
        self.result["gemv"] = json.loads(out.strip().splitlines()[-1])[self.cfg.dtype]
        logger.info("vLLM's matmul kernel alone: %s", self.result["gemv"])

    def start(self, name: str, argv: list[str], port: int, ready: str,
              env: dict[str, str] | None = None) -> Running:
        """Start a server alone on the machine's share of it, and time it to ready."""
        logger.info("starting %s", name)
        server = servers.start(name, argv, port, self.scratch, env)
        sampler = servers.MemorySampler(server.process.pid).start()
        try:
            seconds = servers.wait_ready(server, ready)
        except BaseException:
            sampler.stop()
            servers.stop(server)
            raise
        self.result["startup_s"].setdefault(name, []).append(seconds)
        logger.info("%s ready in %.1f s", name, seconds)
        return server, sampler

    def stop(self, name: str, server: servers.Served, sampler: servers.MemorySampler) -> None:
        """Stop a server; keep the highest memory peak any instance of it reached."""
        peaks = sampler.stop()
        servers.stop(server)
        kept = self.result["memory"].setdefault(name, peaks)
        for key, value in peaks.items():
            kept[key] = max(kept[key], value)

    def start_raw(self, eager: bool = True, env: dict[str, str] | None = None) -> Running:
        port = servers.free_port()
        argv = servers.raw_vllm_argv(wl.engine(enforce_eager=eager), self.model_path, port)
        return self.start(f"raw-{'eager' if eager else 'compiled'}", argv, port, "/health", env)

    def start_service(self, eager: bool = True, env: dict[str, str] | None = None) -> Running:
        port = servers.free_port()
        env = {**(env or {}), "LLM_ENFORCE_EAGER": str(eager).lower()}
        name = f"service-{'eager' if eager else 'compiled'}"
        return self.start(name, servers.serve_command(port), port, "/readyz", env)

    def vllm_bench(self, url: str, label: str, concurrency: int, num: int,
                   seed: int) -> clients.RunResult:
        argv = clients.vllm_bench_argv(
            url, self.cfg.served_model_name, self.model_path, self.plan.workload, concurrency,
            num, seed, self.scratch / "vllm-bench" / f"{label}.json")
        result = clients.vllm_bench_serve(argv, self.scratch / "vllm-bench" / f"{label}.log")
        result.client["command"] = "vllm bench serve " + " ".join(argv)
        return result

    def warm_up(self, raw_url: str, service_url: str) -> None:
        """First requests pay one-off costs (allocations, lazy imports): keep them out."""
        n = self.plan.warmup_prompts
        for name, url in (("raw", raw_url), ("service", service_url)):
            self.vllm_bench(url, f"warmup-{name}", n, n, wl.WARMUP_SEED)
        prompts = wl.prompts(self.plan.workload, 2, wl.WARMUP_SEED)
        clients.generate_run(service_url, prompts, self.plan.workload, 2)
        clients.chat_run(service_url, self.cfg.served_model_name, prompts, self.plan.workload, 2)

    def record(self, system: str, concurrency: int, repeat: int,
               run: Callable[[], clients.RunResult]) -> None:
        time.sleep(SETTLE_S)
        load_before = meta.load_average()
        result = run()
        metrics = summarize(result.records, result.duration_s, concurrency)
        self.result["runs"].append({
            "system": system, "concurrency": concurrency, "repeat": repeat,
            "load_before": load_before, "load_after": meta.load_average(),
            "metrics": asdict(metrics), "failures": result.failures, "client": result.client,
            "records": [asdict(r) for r in result.records],
        })
        logger.info("%-17s c=%-2d #%d  %6.1f tok/s  ttft p50 %6.0f ms  tpot p50 %5.1f ms  "
                    "%d failed  load %s", system, concurrency, repeat, metrics.output_tok_s,
                    metrics.ttft_p50_ms, metrics.tpot_p50_ms, len(result.failures), load_before)

    # -- phases -----------------------------------------------------------------------------

    def served_run(self, system: str, urls: dict[str, str], concurrency: int,
                   repeat: int) -> clients.RunResult:
        """One run of ``system`` (one of ``SERVED``) at one level."""
        seed, n = wl.seed_for(concurrency, repeat), self.plan.num_prompts(concurrency)
        if system == "service-generate":
            prompts = wl.prompts(self.plan.workload, n, seed)
            return clients.generate_run(urls["service"], prompts, self.plan.workload, concurrency)
        if system == "service-chat-eos":
            prompts = wl.prompts(self.plan.workload, n, seed)
            return clients.chat_run(urls["service"], self.cfg.served_model_name, prompts,
                                    self.plan.workload, concurrency)
        url = urls["raw" if system == "raw-chat" else "service"]
        return self.vllm_bench(url, f"{system}-c{concurrency}-r{repeat}", concurrency, n, seed)

    def served_runs(self, urls: dict[str, str], repeats: range) -> None:
        for li, c in enumerate(self.plan.levels):
            for r in repeats:
                shift = (li + r) % len(SERVED)
                for system in SERVED[shift:] + SERVED[:shift]:
                    self.record(system, c, r, partial(self.served_run, system, urls, c, r))
                self.save()

    def eager_phase(self) -> None:
        """Each round starts both servers (the first one alternating), runs its share of the
        repeats on them, and stops them."""
        for round_ in range(self.plan.rounds):
            starts = [("raw", self.start_raw), ("service", self.start_service)]
            running: dict[str, Running] = {}
            try:
                for name, start in starts[:: 1 if round_ % 2 == 0 else -1]:
                    running[name] = start()
                urls = {name: server.url for name, (server, _) in running.items()}
                self.warm_up(urls["raw"], urls["service"])
                self.served_runs(urls, self.plan.round_repeats(round_))
                if round_ == self.plan.rounds - 1:
                    self.profile_phase({name: server for name, (server, _) in running.items()})
            finally:
                for name, (server, sampler) in running.items():
                    self.stop(name, server, sampler)

    def profile_phase(self, running: dict[str, servers.Served]) -> None:
        """Both servers once more per profiled level, under py-spy: where their CPU time goes.
        These runs are not counted in the throughput figures (py-spy takes some CPU)."""
        for c in self.plan.profile_levels:
            for name, server in running.items():
                label = f"profile-{name}-c{c}"
                drive = partial(self.output_tokens, server.url, label, c)
                found = prof.profile(server.process.pid, drive,
                                     self.scratch / "py-spy" / f"{label}.txt")
                profiled = self.result.setdefault("profile", {"rate_hz": prof.RATE_HZ})
                profiled.setdefault(name, {})[str(c)] = found
                logger.info("%s: %s", label, {role: f"{v['cpu_s_per_1k_tokens']:.1f} cpu-s/1k tok"
                                              for role, v in found["roles"].items()})
        self.save()

    def output_tokens(self, url: str, label: str, concurrency: int) -> int:
        """One ``vllm bench serve`` run at ``concurrency``; the output tokens it got."""
        seed, n = wl.seed_for(concurrency, 0), self.plan.num_prompts(concurrency)
        result = self.vllm_bench(url, label, concurrency, n, seed)
        return sum(r.output_tokens for r in result.records)

    def transformers_phase(self) -> None:
        plan = self.plan
        spec = {
            "model_path": self.model_path, "dtype": self.cfg.dtype, "threads": plan.hf_threads,
            "output_len": plan.workload.output_len,
            "warmup_prompts": wl.prompts(plan.workload, 2, wl.WARMUP_SEED),
            "runs": [{"concurrency": c, "repeat": r,
                      "prompts": wl.prompts(plan.workload, plan.num_prompts(c), wl.seed_for(c, r))}
                     for c in plan.levels for r in range(plan.hf_repeats)],
        }
        self.scratch.mkdir(parents=True, exist_ok=True)
        spec_file, out_file = self.scratch / "hf-spec.json", self.scratch / "hf-result.json"
        spec_file.write_text(json.dumps(spec))
        logger.info("transformers: %d runs", len(plan.levels) * plan.hf_repeats)
        load_before = meta.load_average()
        with (self.scratch / "transformers.log").open("wb") as log:
            proc = subprocess.Popen([servers.PYTHON, "-m", "bench.hf_runner", str(spec_file),
                                     str(out_file)], cwd=servers.ROOT, stdout=log,
                                    stderr=subprocess.STDOUT)
            sampler = servers.MemorySampler(proc.pid).start()
            code = proc.wait()
            self.result["memory"]["transformers"] = sampler.stop()
        if code != 0:
            raise RuntimeError(f"transformers runner exited {code}; see {log.name}")
        hf = json.loads(out_file.read_text())
        self.result["transformers"] = hf["meta"]
        for run in hf["runs"]:
            records = [RequestRecord(**rec) for rec in run["records"]]
            metrics = summarize(records, run["duration_s"], run["concurrency"])
            self.result["runs"].append({
                "system": "transformers", "concurrency": run["concurrency"],
                "repeat": run["repeat"], "load_before": load_before,
                "load_after": meta.load_average(), "metrics": asdict(metrics), "failures": [],
                "client": {"client": "bench.hf_runner"}, "records": run["records"]})
            logger.info("transformers c=%-2d #%d  %6.1f tok/s  ttft p50 %6.0f ms  tpot p50 "
                        "%5.1f ms", run["concurrency"], run["repeat"], metrics.output_tok_s,
                        metrics.ttft_p50_ms, metrics.tpot_p50_ms)

    def timed_starts(self, eager: bool, service_first: bool = False) -> None:
        """Start and stop raw vLLM and the service, each from empty compile caches, vLLM's and
        torch's (a warm cache was measured not to load reliably; and the second server must not
        reuse the first one's)."""
        starts = [self.start_raw, self.start_service]
        for start in starts[::-1] if service_first else starts:
            with tempfile.TemporaryDirectory(dir=self.scratch) as cache:
                env = {"VLLM_CACHE_ROOT": cache, "TORCHINDUCTOR_CACHE_DIR": f"{cache}/inductor",
                       "TRITON_CACHE_DIR": f"{cache}/triton"}
                server, mem = start(eager, env)
                mem.stop()
                servers.stop(server)

    def compiled_phase(self) -> None:
        """Compiled start-ups, when the plan has them and they fit in its time budget."""
        elapsed = time.monotonic() - self.started
        if not self.plan.compiled_startup:
            self.result["compiled_startup"] = "not in this plan"
            return
        if elapsed + COMPILED_STARTUP_ESTIMATE_S > self.plan.budget_s:
            self.result["compiled_startup"] = (
                f"skipped: {elapsed / 60:.1f} min used, ~{COMPILED_STARTUP_ESTIMATE_S / 60:.0f} "
                f"more needed, budget {self.plan.budget_s / 60:.0f} min; "
                "`python -m bench --startup` measures them on their own")
            logger.warning("compiled start-ups %s", self.result["compiled_startup"])
            return
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.timed_starts(eager=False)
        self.result["compiled_startup"] = ("measured, each from empty compile caches (vLLM's, "
                                           "torch inductor's and triton's)")

    def run_startups(self) -> dict[str, Any]:
        """Start-up times alone, twice each, cold caches: eager and compiled, raw vLLM and the
        service, in an order that gives neither the advantage of going second."""
        self.result["machine"] = meta.machine(servers.ROOT)
        self.result["load_start"] = meta.load_average()
        self.scratch.mkdir(parents=True, exist_ok=True)
        for eager, service_first in ((True, False), (False, False), (False, True), (True, True)):
            self.timed_starts(eager, service_first)
            self.save()
        self.result["load_end"] = meta.load_average()
        self.result["wall_s"] = time.monotonic() - self.started
        self.save()
        return self.result

    def save(self) -> None:
        self.result_file.parent.mkdir(parents=True, exist_ok=True)
        self.result_file.write_text(json.dumps(self.result, indent=1))

    def run(self) -> dict[str, Any]:
        self.result["machine"] = meta.machine(servers.ROOT)
        self.result["load_start"] = meta.load_average()
        self.result["environment"] = environment_note()
        phases = (self.measure_bandwidth, self.eager_phase, self.transformers_phase,
                  self.compiled_phase)
        self.result["phase_s"] = {}
        for phase in phases:
            started = time.monotonic()
            phase()
            self.result["phase_s"][phase.__name__] = round(time.monotonic() - started, 1)
        self.result["load_end"] = meta.load_average()
        self.result["wall_s"] = time.monotonic() - self.started
        self.save()
        return self.result


def environment_note() -> dict[str, str]:
    """Variables that change how the engines run, if the caller set any."""
    return {k: v for k, v in os.environ.items() if k.startswith(("LLM_", "VLLM_", "OMP_"))}
