"""Several workers over one engine (``vllm_bento.front_ends``), without an engine: the shared
in-flight cap across processes, the run folder's records, and the settings."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from vllm_bento.admission import Admission
from vllm_bento.front_ends import RunFolder, SharedSequences
from vllm_bento.hardware import Hardware
from vllm_bento.settings import DEFAULT_GPU_API_SERVER_COUNT, api_server_count, load_settings

CPU = Hardware(gpu_count=0, cpu_flags=frozenset())
GPU = Hardware(gpu_count=1, cpu_flags=frozenset())


def test_the_cap_is_the_servers_whichever_worker_admits(tmp_path: Path) -> None:
    first = Admission(max_in_flight=3, shared=SharedSequences(tmp_path / "s", 2, 0))
    second = Admission(max_in_flight=3, shared=SharedSequences(tmp_path / "s", 2, 1))
    a = first.admit(None, 2)
    assert a is not None
    assert not second.has_room(2)
    assert second.admit(None, 2) is None  # 2 + 2 > 3: the other worker's count is seen
    b = second.admit(None, 1)
    assert b is not None and first.shared is not None and first.shared.total() == 3
    assert first.admit(None, 1) is None
    first.release(a)
    first.release(a)  # a second release frees nothing more
    assert second.shared is not None and second.shared.total() == 1
    assert second.admit(None, 2) is not None


def test_a_request_bigger_than_the_cap_runs_only_alone(tmp_path: Path) -> None:
    first = Admission(max_in_flight=2, shared=SharedSequences(tmp_path / "s", 2, 0))
    second = Admission(max_in_flight=2, shared=SharedSequences(tmp_path / "s", 2, 1))
    held = second.admit(None, 1)
    assert held is not None and first.admit(None, 5) is None
    second.release(held)
    assert first.admit(None, 5) is not None


def _take_many(path: str, index: int, cap: int, tries: int,
               out: multiprocessing.Queue[int]) -> None:
    shared = SharedSequences(Path(path), 4, index)
    got = sum(shared.take(0, 1, cap) for _ in range(tries))  # each worker holds at most 1
    out.put(got)


def test_workers_racing_for_the_last_slot_never_exceed_the_cap(tmp_path: Path) -> None:
    """Four processes each try to take one slot of a cap of 1, many times, never releasing
    once they hold it: exactly one of them ever gets it."""
    SharedSequences(tmp_path / "s", 4, 0)  # sized before the race
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[int] = ctx.Queue()
    procs = [ctx.Process(target=_take_many, args=(str(tmp_path / "s"), i, 1, 2000, out))
             for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    # take(0, 1) sets the slot to 1 again and again once held: count the holders.
    results = [out.get(timeout=5) for _ in procs]
    assert sum(1 for got in results if got) == 1, results


def test_run_folder_tells_a_dead_worker_from_one_told_to_stop(tmp_path: Path) -> None:
    run = RunFolder(tmp_path, 3)
    run.serving(0)
    assert run.died_before(0) == os.getpid() and run.dead_workers() == []
    dead = multiprocessing.get_context("spawn").Process(target=int)
    dead.start()
    dead.join()
    (tmp_path / "worker-1.pid").write_text(str(dead.pid))  # its file is there, it is not
    (tmp_path / "worker-2.pid").write_text(str(dead.pid))
    run.stopping(2)  # this one was told to stop
    assert run.dead_workers() == [(1, dead.pid)]
    run.write_engine_pids([11, 12])
    assert run.engine_pids() == [11, 12]
    place = run.place(1)
    assert (place.index, place.count, place.launches_engine) == (1, 3, False)
    assert place.inputs[1] == f"ipc://{tmp_path}/input-1" and len(set(place.outputs)) == 3
    assert run.place(0).launches_engine


def test_api_server_count_defaults() -> None:
    assert api_server_count(load_settings(), CPU) == 1
    assert api_server_count(load_settings(), GPU) == DEFAULT_GPU_API_SERVER_COUNT
    assert api_server_count(load_settings(api_server_count=3), CPU) == 3
    # Runtime adapter loading needs one front end: the GPU default gives way to it ...
    assert api_server_count(load_settings(allow_runtime_lora=True), GPU) == 1


def test_runtime_lora_with_several_api_servers_is_refused_naming_both() -> None:
    with pytest.raises(ValidationError, match="allow_runtime_lora needs one API server.*"
                       "api_server_count is 2"):
        load_settings(allow_runtime_lora=True, api_server_count=2)
