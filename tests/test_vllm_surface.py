"""The vLLM internals vllm_bento.vllm_entrypoints relies on. When the pinned release changes,
these fail first and say what moved."""

from __future__ import annotations

import inspect

import pytest

from vllm_bento.hardware import Hardware
from vllm_bento.settings import EngineConfig, engine_config, load_settings
from vllm_bento.vllm_entrypoints import VLLM_VERSION, cli_args, installed_vllm_version, parse_args

CPU_CFG = EngineConfig(
    served_model_name="org/model", max_model_len=2048, dtype="float32",
    enable_prefix_caching=True, enforce_eager=True, tensor_parallel_size=1,
    gpu_memory_utilization=None, cpu_kv_cache_gib=2, shutdown_timeout_s=30,
)


def test_installed_vllm_is_the_pinned_release() -> None:
    assert installed_vllm_version().split("+")[0] == VLLM_VERSION


def test_entrypoint_functions_keep_their_signatures() -> None:
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args

    assert list(inspect.signature(build_async_engine_client).parameters)[:1] == ["args"]
    assert list(inspect.signature(build_app).parameters)[:3] == [
        "args", "supported_tasks", "model_config"]
    assert list(inspect.signature(init_app_state).parameters)[:4] == [
        "engine_client", "state", "args", "supported_tasks"]
    assert callable(make_arg_parser) and callable(validate_parsed_serve_args)


def test_vllms_parser_takes_our_arguments() -> None:
    args = parse_args(cli_args(CPU_CFG, "/models/x"))
    assert args.model == "/models/x"
    assert args.served_model_name == ["org/model"]
    assert (args.max_model_len, args.dtype, args.enforce_eager) == (2048, "float32", True)
    assert args.enable_prefix_caching is True
    assert args.kv_cache_memory_bytes == 2 * 2**30
    assert args.tensor_parallel_size == 1
    assert args.shutdown_timeout == 30


def test_gpu_arguments() -> None:
    gpu = EngineConfig(
        served_model_name="meta-llama/Llama-3.1-8B-Instruct", max_model_len=2048, dtype="half",
        enable_prefix_caching=False, enforce_eager=False, tensor_parallel_size=2,
        gpu_memory_utilization=0.9, cpu_kv_cache_gib=None,
    )
    args = parse_args(cli_args(gpu, "/models/llama"))
    assert (args.dtype, args.enforce_eager, args.tensor_parallel_size) == ("half", False, 2)
    assert args.gpu_memory_utilization == 0.9 and args.kv_cache_memory_bytes is None
    assert args.enable_prefix_caching is False


@pytest.mark.parametrize(
    ("gpu_count", "hw", "expected"),
    [(1, Hardware(gpu_count=0, cpu_flags=frozenset({"avx2"})),
      {"dtype": "float32", "enforce_eager": True, "tensor_parallel_size": 1,
       "kv_cache_memory_bytes": 2 * 2**30}),
     (1, Hardware(gpu_count=1, cpu_flags=frozenset()),
      {"dtype": "half", "enforce_eager": False, "tensor_parallel_size": 1,
       "gpu_memory_utilization": 0.9, "kv_cache_memory_bytes": None}),
     (2, Hardware(gpu_count=2, cpu_flags=frozenset()),
      {"dtype": "half", "enforce_eager": False, "tensor_parallel_size": 2,
       "gpu_memory_utilization": 0.9, "kv_cache_memory_bytes": None})],
    ids=["cpu", "one-l4", "two-gpus"],
)
def test_resolved_settings_reach_vllm(gpu_count: int, hw: Hardware,
                                      expected: dict[str, object]) -> None:
    """Settings -> engine values -> `vllm serve` arguments -> vLLM's own parser, per machine."""
    settings = load_settings(model_id="meta-llama/Llama-3.1-8B-Instruct", gpu_count=gpu_count)
    args = parse_args(cli_args(engine_config(settings, hw), "/models/llama"))
    assert {name: getattr(args, name) for name in expected} == expected
    assert (args.max_model_len, args.enable_prefix_caching) == (2048, True)
    assert args.served_model_name == ["meta-llama/Llama-3.1-8B-Instruct"]
