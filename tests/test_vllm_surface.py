"""The vLLM internals vllm_bento.vllm_entrypoints relies on. When the pinned release changes,
these fail first and say what moved."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest

from bench import dummy_model
from vllm_bento.engine_values import EngineConfig
from vllm_bento.hardware import Hardware
from vllm_bento.packaged_model import ensure_packaged_model
from vllm_bento.settings import engine_config, load_settings
from vllm_bento.vllm_entrypoints import (
    MANAGED_FLAGS,
    RUNTIME_LORA_ENV,
    STRUCTURED_OUTPUTS_DEFAULTS,
    VLLM_VERSION,
    EngineArgsError,
    _serve_parser,
    check_extra_args,
    cli_args,
    engine_env,
    installed_vllm_version,
    parse_args,
)

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


def test_vllms_model_list_is_what_as_openai_has_it_replaces() -> None:
    """``as_openai_has_it`` drops vLLM's ``GET /v1/models`` route and lists the cards of
    ``OpenAIServingModels.show_available_models``; and ``root`` is where vLLM puts a path."""
    from vllm.entrypoints.openai.models.api_router import router
    from vllm.entrypoints.openai.models.serving import OpenAIServingModels
    from vllm.entrypoints.serve.engine.protocol import ModelCard

    assert ("/v1/models", {"GET"}) in [(r.path, r.methods) for r in router.routes]  # type: ignore[attr-defined]
    assert inspect.iscoroutinefunction(OpenAIServingModels.show_available_models)
    assert {"id", "root", "parent"} <= set(ModelCard.model_fields)


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


def test_extra_engine_flags_reach_vllm() -> None:
    cfg = dataclasses.replace(CPU_CFG, extra_args=(
        "--max-num-seqs", "128", "--kv-cache-dtype", "fp8", "--quantization", "fp8",
        "--load-format", "dummy"))
    args = parse_args(cli_args(cfg, "/models/x"))
    assert (args.max_num_seqs, args.kv_cache_dtype) == (128, "fp8")
    assert (args.quantization, args.load_format) == ("fp8", "dummy")
    assert args.max_model_len == 2048  # the service's own flags still hold


def test_managed_flags_are_vllms() -> None:
    """Each flag the service refuses still exists in vLLM's parser (a rename would let the new
    name through unchecked)."""
    dests = {action.dest for action in _serve_parser()._actions}
    assert set(MANAGED_FLAGS) - dests == set()


def test_every_flag_the_service_sets_is_refused_as_an_extra() -> None:
    """So an extra flag can never override one of the service's (the later one would win).
    The structured-output defaults are the exception: an operator's own replace them."""
    full = dataclasses.replace(CPU_CFG, gpu_memory_utilization=0.9, tool_call_parser="hermes",
                               chat_template="{{ messages }}", reasoning_parser="qwen3",
                               tool_strict_level="parameter",
                               enable_lora=True, lora_modules=(("a", "/adapters/a"),),
                               max_lora_rank=8, max_loras=2)
    for token in cli_args(full, "/models/x"):
        if token.startswith("--") and token not in STRUCTURED_OUTPUTS_DEFAULTS:
            with pytest.raises(EngineArgsError, match="is refused in engine_args"):
                check_extra_args([token, "1"] if token != "--model" else [token, "m"])


def test_vllm_serves_runtime_lora_routes_only_when_the_engine_env_allows(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM reads the variable engine_env sets as it builds its app: off, the load and unload
    routes are not attached."""
    from fastapi import FastAPI
    from vllm.entrypoints.serve.lora.api_router import attach_router

    paths = {"/v1/load_lora_adapter", "/v1/unload_lora_adapter"}
    for allow in (False, True):
        monkeypatch.setenv(RUNTIME_LORA_ENV, engine_env(allow)[RUNTIME_LORA_ENV])
        app = FastAPI()
        attach_router(app)
        assert (paths <= {getattr(route, "path", "") for route in app.routes}) is allow


def test_parse_errors_raise_instead_of_exiting() -> None:
    with pytest.raises(EngineArgsError, match="unrecognized arguments: --no-such-flag"):
        parse_args(["--no-such-flag"])


def test_vllm_loads_the_dummy_llama_config(tmp_path: Path) -> None:
    """bench.dummy_model's folder: vLLM reads it as Llama 3.1 8B with SmolLM2's vocabulary, and
    needs no weights for --load-format dummy."""
    from vllm.engine.arg_utils import EngineArgs

    packaged = Path(ensure_packaged_model().path)
    config = dummy_model.write_dummy_model(tmp_path / "llama-8b-dummy", packaged)
    settings = load_settings(model_id=str(tmp_path / "llama-8b-dummy"),
                             engine_args="--load-format dummy")
    assert settings.served_name == "llama-8b-dummy"
    model = EngineArgs(model=str(tmp_path / "llama-8b-dummy"), load_format="dummy",
                       max_model_len=2048).create_model_config()
    hf = model.hf_config
    assert model.architectures == ["LlamaForCausalLM"]
    assert (hf.num_hidden_layers, hf.hidden_size, hf.num_attention_heads,
            hf.num_key_value_heads, hf.intermediate_size) == (32, 4096, 32, 8, 14336)
    assert hf.rope_parameters["rope_type"] == "llama3" and hf.rope_parameters["factor"] == 8.0
    assert hf.tie_word_embeddings is False
    smol = json.loads((packaged / "config.json").read_text())
    assert model.get_vocab_size() == smol["vocab_size"] == config["vocab_size"] == 49152
    assert (hf.bos_token_id, hf.eos_token_id) == (smol["bos_token_id"], smol["eos_token_id"])
    assert (tmp_path / "llama-8b-dummy" / "tokenizer.json").is_file()
    assert (tmp_path / "llama-8b-dummy" / "chat_template.jinja").is_file()


def test_dummy_llama_weight_bytes() -> None:
    # Meta's count for Llama 3.1 8B, with its own 128256-token vocabulary.
    assert dummy_model.param_count(dummy_model.LLAMA_31_8B) == 8_030_261_248
    smol_vocab = dummy_model.dummy_config({"vocab_size": 49152})
    assert dummy_model.param_count(smol_vocab) == 8_030_261_248 - 2 * (128256 - 49152) * 4096
    assert dummy_model.weight_bytes(smol_vocab) == 2 * dummy_model.param_count(smol_vocab)


def test_the_pieces_several_front_ends_use_keep_their_shape() -> None:
    """``vllm_entrypoints._bind_front_end`` and ``_launch_engine_core``: what ``vllm serve
    --api-server-count N`` is made of, used by the service's workers instead of its parent."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.api_server.entry import (
        build_async_engine_client,
        build_async_engine_client_from_engine_args,
    )
    from vllm.utils.network_utils import ZmqListener, make_zmq_listener
    from vllm.v1.engine.utils import CoreEngineProcManager, EngineZmqAddresses, launch_core_engines
    from vllm.v1.executor import Executor

    assert "client_config" in inspect.signature(build_async_engine_client).parameters
    assert "client_config" in inspect.signature(
        build_async_engine_client_from_engine_args).parameters
    assert list(inspect.signature(launch_core_engines).parameters) == [
        "vllm_config", "executor_class", "log_stats", "addresses"]
    assert list(inspect.signature(make_zmq_listener).parameters) == ["path", "socket_type"]
    assert {"address", "socket"} <= set(ZmqListener.__dataclass_fields__)
    assert {"inputs", "outputs"} <= set(EngineZmqAddresses.__dataclass_fields__)
    assert {"_api_process_count", "_api_process_rank"} <= set(AsyncEngineArgs.__dataclass_fields__)
    assert callable(Executor.get_class)
    assert callable(CoreEngineProcManager.shutdown)
    # The client adopts the listeners it is given (MPClient reads these keys).
    from vllm.v1.engine import core_client

    source = inspect.getsource(core_client.MPClient.__init__)
    for key in ("input_address", "output_address", "input_listener", "output_listener"):
        assert f'"{key}"' in source, key
