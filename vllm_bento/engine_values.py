"""The concrete values an engine starts with: built from the settings for this machine
(``settings.engine_config``), turned into vLLM's flags by ``vllm_entrypoints``. Apart from
both, so that neither imports the other's module to name it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineConfig:
    """Concrete engine values: the settings with every hardware-dependent default filled in."""

    served_model_name: str
    max_model_len: int
    dtype: str
    enable_prefix_caching: bool
    enforce_eager: bool
    tensor_parallel_size: int
    gpu_memory_utilization: float | None  # GPU only
    cpu_kv_cache_gib: int | None  # CPU only
    shutdown_timeout_s: int = 0  # how long the engine drains on SIGTERM before aborting
    tool_call_parser: str | None = None
    chat_template: str | None = None
    tool_strict_level: str | None = None  # None: vLLM's default
    reasoning_parser: str | None = None
    enable_lora: bool = False
    lora_modules: tuple[tuple[str, str], ...] = ()  # (name, absolute folder)
    max_lora_rank: int | None = None  # None: vLLM's default
    max_loras: int | None = None  # None: vLLM's default
    allow_runtime_lora: bool = False  # vLLM's load/unload adapter routes
    extra_args: tuple[str, ...] = ()  # LLM_ENGINE_ARGS, after the flags above
