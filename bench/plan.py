"""How much to run: the full benchmark (``make bench``, under 30 minutes on 2 cores) and a quick
smoke run of every code path (``make bench-quick``, a few minutes).

Prompts are 64 random tokens, 94 with the chat template: shorter than one 128-token block of
vLLM's CPU KV cache, so prefix caching (on, as the service runs it) can never answer a prompt
from the cache, and every system can be sent the very same prompts. Answers are 128 tokens, the
least ``/generate`` accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.workload import Workload


@dataclass(frozen=True)
class Plan:
    """One benchmark run's size."""

    name: str
    workload: Workload
    levels: tuple[int, ...]  # maximum concurrency levels
    repeats: int  # runs per level and served system, for a median and a spread
    # Server instances per system, each running repeats/rounds of the repeats: one instance can
    # be luckier than another in where the OS places its engine processes on the two cores.
    rounds: int
    hf_repeats: int  # transformers runs per level (no server, less to vary)
    prompts: dict[int, int]  # prompts per run, by level
    compiled_startup: bool  # also time compiled (torch.compile) start-ups: minutes each
    budget_s: float  # compiled start-ups are skipped when they would not fit in it
    membw_mib: int = 512  # per process: 16x the 32 MiB L3, so the passes stream from DRAM
    warmup_prompts: int = 4
    # Levels at which both servers run once more under py-spy (bench.profile), uncounted.
    profile_levels: tuple[int, ...] = ()
    # transformers' torch threads: as many as vLLM's engine computes on here (it binds one core
    # and leaves the other to the front end). With two, torch's OpenMP barriers stall whenever
    # anything else runs: a bf16 576x1536 linear took 30 ms instead of 0.7 ms on a busy machine.
    hf_threads: int = 1
    notes: list[str] = field(default_factory=list)

    def num_prompts(self, concurrency: int) -> int:
        return self.prompts[concurrency]

    def round_repeats(self, round_: int) -> range:
        """The repeats the ``round_``-th server instances run."""
        per_round = self.repeats // self.rounds
        return range(round_ * per_round, (round_ + 1) * per_round)


WORKLOAD = Workload(input_len=64, output_len=128)

FULL = Plan(
    name="full",
    workload=WORKLOAD,
    levels=(1, 8, 32),
    repeats=4,
    rounds=2,
    hf_repeats=3,
    # Two waves at 8 and one at 32: with fixed lengths every wave starts and ends together.
    prompts={1: 3, 8: 16, 32: 32},
    compiled_startup=True,
    budget_s=28 * 60,
    profile_levels=(1, 32),
)

QUICK = Plan(
    name="quick",
    workload=WORKLOAD,
    levels=(1, 8),
    repeats=1,
    rounds=1,
    hf_repeats=1,
    prompts={1: 1, 8: 8},
    compiled_startup=False,
    budget_s=10 * 60,
    warmup_prompts=2,
    profile_levels=(8,),
)

# Start-ups only (`python -m bench --startup`): compiled ones take minutes each and do not fit
# in the full run's budget on a busy 2-core machine.
STARTUP = Plan(
    name="startup",
    workload=WORKLOAD,
    levels=(),
    repeats=0,
    rounds=1,
    hf_repeats=0,
    prompts={},
    compiled_startup=True,
    budget_s=float("inf"),
)

PLANS = {plan.name: plan for plan in (FULL, QUICK, STARTUP)}

# Estimated seconds for the two compiled start-ups from cold caches: measured 98-101 s each on
# the 2-core EPYC (187 s for the very first compile on the machine), more when it is busy.
COMPILED_STARTUP_ESTIMATE_S = 2 * 120.0
