"""Configuration resolution: defaults per hardware, overrides by environment and build args."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from bentoml._internal.utils.args import set_arguments
from pydantic import ValidationError

from vllm_bento import hardware
from vllm_bento.engine_values import EngineConfig
from vllm_bento.hardware import Hardware
from vllm_bento.settings import PACKAGED_MODEL_ID, engine_config, load_settings, settings_error
from vllm_bento.vllm_entrypoints import cli_args

AVX2_CPU = Hardware(gpu_count=0, cpu_flags=frozenset({"avx2", "fma"}))
BF16_CPU = Hardware(gpu_count=0, cpu_flags=frozenset({"avx2", "avx512f", "avx512_bf16"}))
ONE_L4 = Hardware(gpu_count=1, cpu_flags=frozenset({"avx2"}))
TWO_GPUS = Hardware(gpu_count=2, cpu_flags=frozenset({"avx2"}))


def test_defaults_follow_bentoml_example() -> None:
    s = load_settings()
    assert s.model_id == PACKAGED_MODEL_ID and s.uses_packaged_model
    assert s.max_model_len == 2048
    assert s.enable_prefix_caching is True
    assert s.max_tokens == 1024


def test_cpu_without_bf16_unit_gets_float32_eager_and_explicit_kv_cache() -> None:
    cfg = engine_config(load_settings(), AVX2_CPU)
    assert (cfg.dtype, cfg.enforce_eager, cfg.tensor_parallel_size) == ("float32", True, 1)
    assert cfg.cpu_kv_cache_gib == 2 and cfg.gpu_memory_utilization is None


def test_cpu_with_bf16_unit_gets_bfloat16() -> None:
    assert engine_config(load_settings(), BF16_CPU).dtype == "bfloat16"


def test_gpu_gets_half_compiled_and_memory_share() -> None:
    cfg = engine_config(load_settings(), ONE_L4)
    assert (cfg.dtype, cfg.enforce_eager, cfg.tensor_parallel_size) == ("half", False, 1)
    assert cfg.gpu_memory_utilization == 0.9 and cfg.cpu_kv_cache_gib is None


FOUR_GPUS = Hardware(gpu_count=4, cpu_flags=frozenset({"avx2"}))


@pytest.mark.parametrize(
    ("gpu_count", "hw", "expected"),
    [(2, TWO_GPUS, 2), (1, ONE_L4, 1), (2, FOUR_GPUS, 2), (2, ONE_L4, 1), (1, TWO_GPUS, 1)],
    ids=["2-of-2", "1-of-1", "2-of-4-visible", "2-asked-1-visible", "1-asked-2-visible"],
)
def test_tensor_parallel_defaults_to_the_gpus_given(gpu_count: int, hw: Hardware,
                                                    expected: int) -> None:
    settings = load_settings(gpu_count=gpu_count)
    assert engine_config(settings, hw).tensor_parallel_size == expected


def test_llama_on_one_l4_resolves_like_the_example() -> None:
    set_arguments({"model_id": "meta-llama/Llama-3.1-8B-Instruct"})
    cfg = engine_config(load_settings(), ONE_L4)
    assert cfg == EngineConfig(
        served_model_name="meta-llama/Llama-3.1-8B-Instruct", max_model_len=2048, dtype="half",
        enable_prefix_caching=True, enforce_eager=False, tensor_parallel_size=1,
        gpu_memory_utilization=0.9, cpu_kv_cache_gib=None, shutdown_timeout_s=30,
    )


def test_two_gpu_build_shards_over_both() -> None:
    set_arguments({"model_id": "meta-llama/Llama-3.1-8B-Instruct", "gpu_count": "2"})
    cfg = engine_config(load_settings(), TWO_GPUS)
    assert (cfg.tensor_parallel_size, cfg.dtype, cfg.gpu_memory_utilization) == (2, "half", 0.9)


@pytest.mark.parametrize(
    ("args", "message"),
    [({"gpu_count": "0"}, "greater than or equal to 1"),
     ({"gpu_type": "nvidia-l5"}, "nvidia-l4"),
     ({"tensor_parallel_size": "2"}, "exceeds gpu_count"),
     ({"modle_id": "x"}, "unknown build argument(s) modle_id")],
)
def test_invalid_build_arguments_are_refused(args: dict[str, str], message: str) -> None:
    set_arguments(args)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_settings()


def test_environment_overrides_every_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_MODEL_ID", "meta-llama/Llama-3.1-8B-Instruct")
    monkeypatch.setenv("LLM_DTYPE", "bfloat16")
    monkeypatch.setenv("LLM_ENFORCE_EAGER", "false")
    monkeypatch.setenv("LLM_ENABLE_PREFIX_CACHING", "false")
    monkeypatch.setenv("LLM_CPU_KV_CACHE_GIB", "4")
    monkeypatch.setenv("LLM_MAX_MODEL_LEN", "4096")
    s = load_settings()
    assert not s.uses_packaged_model
    cfg = engine_config(s, AVX2_CPU)
    assert cfg.served_model_name == "meta-llama/Llama-3.1-8B-Instruct"
    assert (cfg.dtype, cfg.enforce_eager, cfg.enable_prefix_caching) == ("bfloat16", False, False)
    assert (cfg.cpu_kv_cache_gib, cfg.max_model_len) == (4, 4096)


def test_build_argument_sets_model_and_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    set_arguments({"model_id": "meta-llama/Llama-3.1-8B-Instruct", "dtype": "half"})
    assert load_settings().model_id == "meta-llama/Llama-3.1-8B-Instruct"
    monkeypatch.setenv("LLM_DTYPE", "float32")
    assert load_settings().dtype == "float32"


@pytest.mark.parametrize(
    ("name", "value"),
    [("LLM_DTYPE", "int3"), ("LLM_MAX_TOKENS", "64"), ("LLM_MAX_TOKENS", "2048"),
     ("LLM_CPU_KV_CACHE_GIB", "0"), ("LLM_GPU_MEMORY_UTILIZATION", "1.5")],
)
def test_invalid_settings_are_refused(monkeypatch: pytest.MonkeyPatch, name: str,
                                      value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        load_settings()


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nflags\t: other\n")
    assert hardware.read_cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}
    assert hardware.read_cpu_flags(tmp_path / "missing") == frozenset()


def test_cuda_visible_devices_alone_is_not_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # BentoML sets CUDA_VISIBLE_DEVICES=0 for a GPU service even on a machine without one.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr("shutil.which", lambda _: None)
    assert hardware.count_gpus() == 0


# Engine flags (LLM_ENGINE_ARGS) and model folders.


def test_engine_flags_reach_the_engine_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_ENGINE_ARGS", "--max-num-seqs 128 --kv-cache-dtype fp8 "
                       "--override-generation-config '{\"temperature\": 0.5}'")
    cfg = engine_config(load_settings(), AVX2_CPU)
    extra = ("--max-num-seqs", "128", "--kv-cache-dtype", "fp8",
             "--override-generation-config", '{"temperature": 0.5}')
    assert cfg.extra_args == extra
    argv = cli_args(cfg, "/models/x")
    assert tuple(argv[-len(extra):]) == extra  # after the service's own flags
    assert cfg.max_model_len == 2048 and "--max-model-len" in argv


def test_no_engine_flags_by_default() -> None:
    assert engine_config(load_settings(), AVX2_CPU).extra_args == ()


@pytest.mark.parametrize(
    ("engine_args", "message"),
    [("--no-such-flag", "unrecognized arguments: --no-such-flag"),
     ("--max-num-seqs abc", "argument --max-num-seqs: invalid int value: 'abc'"),
     ("--kv-cache-dtype fp9", "argument --kv-cache-dtype: invalid choice: 'fp9'"),
     ("--max-num", "unrecognized arguments: --max-num"),  # no abbreviations
     ("--enable-log-outputs", "--enable-log-outputs requires --enable-log-requests"),
     ("--max-num-seqs '128", "No closing quotation")],
    ids=["unknown", "bad-int", "bad-choice", "abbreviated", "vllm-check", "quoting"],
)
def test_engine_flags_vllm_refuses_fail_with_its_message(monkeypatch: pytest.MonkeyPatch,
                                                         engine_args: str, message: str) -> None:
    monkeypatch.setenv("LLM_ENGINE_ARGS", engine_args)
    with pytest.raises(ValidationError, match=re.escape(message)) as caught:
        load_settings()
    assert caught.value.errors()[0]["loc"] == ("engine_args",)


@pytest.mark.parametrize(
    ("engine_args", "flag", "instead"),
    [("--max-model-len 4096", "--max-model-len", "LLM_MAX_MODEL_LEN"),
     ("--max-model-len=4096", "--max-model-len", "LLM_MAX_MODEL_LEN"),
     ("--max_model_len 4096", "--max-model-len", "LLM_MAX_MODEL_LEN"),
     ("--max_model_len=4096", "--max-model-len", "LLM_MAX_MODEL_LEN"),
     ("--dtype auto", "--dtype", "LLM_DTYPE"),  # even at vLLM's default value
     ("-tp 2", "--tensor-parallel-size", "LLM_TENSOR_PARALLEL_SIZE"),
     ("--no-enable-prefix-caching", "--enable-prefix-caching", "LLM_ENABLE_PREFIX_CACHING"),
     ("--enforce-eager", "--enforce-eager", "LLM_ENFORCE_EAGER"),
     ("--served_model_name=x", "--served-model-name", "LLM_SERVED_MODEL_NAME"),
     ("--kv-cache-memory-bytes 1G", "--kv-cache-memory-bytes", "LLM_CPU_KV_CACHE_GIB"),
     ("--tool-call-parser hermes", "--tool-call-parser", "LLM_TOOL_CALL_PARSER"),
     ("--reasoning-parser qwen3", "--reasoning-parser", "LLM_REASONING_PARSER"),
     ("--enable-lora", "--enable-lora", "LLM_LORA_MODULES"),
     ("--lora-modules a=/x", "--lora-modules", "LLM_LORA_MODULES"),
     ("--lora_modules=a=/x", "--lora-modules", "LLM_LORA_MODULES"),
     ("--max-lora-rank 8", "--max-lora-rank", "LLM_MAX_LORA_RANK"),
     ("--max-loras 2", "--max-loras", "LLM_MAX_LORAS"),
     ("--api-key k", "--api-key", "LLM_API_KEYS"),
     ("--shutdown-timeout 5", "--shutdown-timeout", "LLM_SHUTDOWN_GRACE_S"),
     ("some/model", "a model (positional argument)", "LLM_MODEL_ID"),
     ("--model some/model", "--model", "LLM_MODEL_ID"),
     ("--port 8001", "--port", "bentoml serve"),
     ("--ssl-keyfile k.pem", "--ssl-keyfile", "bentoml serve"),
     ("--api-server-count 2", "--api-server-count", "LLM_API_SERVER_COUNT"),
     ("--headless", "--headless", "in-process"),
     ("--config flags.yaml", "--config", "put the flags here"),
     ("--help", "--help", "vllm serve --help")],
)
def test_flags_the_service_sets_are_refused_naming_the_setting(
        monkeypatch: pytest.MonkeyPatch, engine_args: str, flag: str, instead: str) -> None:
    monkeypatch.setenv("LLM_ENGINE_ARGS", f"--max-num-seqs 8 {engine_args}")
    with pytest.raises(ValidationError) as caught:  # not SystemExit, even for --help
        load_settings()
    message = str(caught.value)
    assert f"{flag} is refused in engine_args (LLM_ENGINE_ARGS)" in message
    assert instead in message


def test_engine_flags_from_a_build_argument_are_checked_too() -> None:
    set_arguments({"engine_args": "--max-num-seqs 64"})
    assert load_settings().engine_arg_list == ("--max-num-seqs", "64")
    set_arguments({"engine_args": "--no-such-flag"})
    with pytest.raises(ValidationError, match="unrecognized arguments: --no-such-flag"):
        load_settings()


def hf_folder(path: Path, weights: str | None = "model.safetensors") -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    if weights:
        (path / weights).write_bytes(b"")
    return path


def test_model_folder_is_served_under_its_name(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path / "my-llama")
    settings = load_settings(model_id=str(folder))
    assert settings.model_folder == folder and not settings.uses_packaged_model
    assert settings.served_name == "my-llama"
    cfg = engine_config(settings, AVX2_CPU)
    assert cfg.served_model_name == "my-llama"
    assert cfg.tool_call_parser is None  # the packaged model's parser is the packaged model's


def test_relative_model_folder_is_made_absolute(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    hf_folder(tmp_path / "models" / "x")
    monkeypatch.chdir(tmp_path / "models")
    monkeypatch.setenv("LLM_MODEL_ID", "./x/")
    settings = load_settings()
    assert settings.model_id == str(tmp_path / "models" / "x")
    assert settings.served_name == "x"


@pytest.mark.parametrize(
    ("model_id", "served_model_name", "expected"),
    [(PACKAGED_MODEL_ID, None, PACKAGED_MODEL_ID),
     ("meta-llama/Llama-3.1-8B-Instruct", None, "meta-llama/Llama-3.1-8B-Instruct"),
     ("meta-llama/Llama-3.1-8B-Instruct", "llama", "llama"),
     (PACKAGED_MODEL_ID, "smol", "smol")],
)
def test_served_model_name_defaults_to_the_model_id(model_id: str, served_model_name: str | None,
                                                    expected: str) -> None:
    settings = load_settings(model_id=model_id, served_model_name=served_model_name)
    assert settings.served_name == expected
    assert engine_config(settings, AVX2_CPU).served_model_name == expected


def test_served_model_name_overrides_a_folders_name(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_MODEL_ID", str(hf_folder(tmp_path / "ckpt")))
    monkeypatch.setenv("LLM_SERVED_MODEL_NAME", "my-model")
    assert engine_config(load_settings(), AVX2_CPU).served_model_name == "my-model"


def test_folder_without_config_json_is_refused(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "weights.safetensors").write_bytes(b"")
    monkeypatch.setenv("LLM_MODEL_ID", str(tmp_path))
    with pytest.raises(ValidationError, match="has no config.json: not a Hugging Face model"):
        load_settings()


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin", "model.pt"])
def test_folder_with_weights_vllm_loads_by_default_is_accepted(tmp_path: Path,
                                                               weights: str) -> None:
    folder = hf_folder(tmp_path / "m", weights)
    assert load_settings(model_id=str(folder)).model_folder == folder


def test_folder_without_weights_is_refused_before_the_engine_starts(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path / "config-only", weights=None)
    with pytest.raises(ValidationError, match="has no weights .* --load-format dummy"):
        load_settings(model_id=str(folder))
    with pytest.raises(ValidationError, match="has no weights"):
        load_settings(model_id=str(folder), engine_args="--load-format safetensors")


@pytest.mark.parametrize("engine_args", ["--load-format dummy", "--load_format=dummy",
                                         "--max-num-seqs 4 --load-format=tensorizer"])
def test_folder_without_weights_is_served_when_loaded_another_way(tmp_path: Path,
                                                                  engine_args: str) -> None:
    folder = hf_folder(tmp_path / "config-only", weights=None)
    assert load_settings(model_id=str(folder), engine_args=engine_args).model_folder == folder


def test_missing_model_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=f"model folder {tmp_path / 'nope'} does not exist"):
        load_settings(model_id=str(tmp_path / "nope"))


@pytest.mark.parametrize("keys", ["clé-secrète", "two words", "a,b c", "key;x", "k€y"])
def test_api_keys_outside_bearer_token_characters_are_refused(keys: str) -> None:
    with pytest.raises(ValidationError, match="RFC 6750"):
        load_settings(api_keys=keys)


def test_api_keys_of_bearer_token_characters_are_accepted() -> None:
    keys = "sk-abc_123.x~y+z/w==, other-key"
    assert load_settings(api_keys=keys).api_key_list == ("sk-abc_123.x~y+z/w==", "other-key")


@pytest.mark.parametrize(("keys", "why"), [
    ("", "holds no key"), (",", "holds no key"), (" ", "holds no key"), (" , ", "holds no key"),
    ("k1,", "empty item"), (",k1", "empty item"), ("k1,,k2", "empty item")])
def test_api_keys_set_but_blank_refuse_to_start(keys: str, why: str) -> None:
    """Fail closed: an operator who set the variable asked for keys (a Secret that did not
    mount, a template variable left empty must not open the server)."""
    with pytest.raises(ValidationError, match=why):
        load_settings(api_keys=keys)


def test_api_keys_unset_means_no_keys() -> None:
    assert load_settings().api_key_list == ()


def test_a_settings_error_is_one_line_naming_each_variable() -> None:
    with pytest.raises(ValidationError) as refused:
        load_settings(api_keys=" ", max_n=0)
    line = settings_error(refused.value)
    assert "\n" not in line and line.startswith("Invalid settings: ")
    assert "LLM_API_KEYS (build arg api_keys): it is set but holds no key" in line
    assert "LLM_MAX_N (build arg max_n): Input should be greater than or equal to 1" in line
