"""LoRA adapter settings: ``LLM_LORA_MODULES``, ``LLM_MAX_LORA_RANK``, ``LLM_MAX_LORAS`` and
``LLM_ALLOW_RUNTIME_LORA``, checked as the settings load and read back by vLLM's own parser."""

from __future__ import annotations

import json
import re
from argparse import Namespace
from pathlib import Path

import pytest
from bentoml._internal.utils.args import set_arguments
from pydantic import ValidationError

from vllm_bento.hardware import Hardware
from vllm_bento.settings import (
    LORA_RANKS,
    PACKAGED_MODEL_ID,
    VLLM_MAX_LORA_RANK,
    engine_config,
    load_settings,
)
from vllm_bento.vllm_entrypoints import RUNTIME_LORA_ENV, cli_args, engine_env, parse_args

CPU = Hardware(gpu_count=0, cpu_flags=frozenset({"avx2", "fma"}))


def adapter(path: Path, rank: int = 8, **config: object) -> Path:
    """A folder that reads as a PEFT adapter (only its config: the settings read nothing else)."""
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA",
                                                          **config}))
    return path


def vllm_args(**settings: object) -> Namespace:
    """The engine arguments vLLM's parser reads from the service's flags for ``settings``."""
    return parse_args(cli_args(engine_config(load_settings(**settings), CPU), "/models/x"))


def test_each_adapter_reaches_vllm_under_its_name(tmp_path: Path) -> None:
    from vllm.entrypoints.openai.models.protocol import LoRAModulePath

    pirate, sql = adapter(tmp_path / "pirate"), adapter(tmp_path / "sql")
    args = vllm_args(lora_modules=f" pirate={pirate} , sql = {sql},")
    assert args.enable_lora is True
    assert args.lora_modules == [
        LoRAModulePath("pirate", str(pirate)), LoRAModulePath("sql", str(sql))]
    # Limits left unset are vLLM's defaults.
    assert (args.max_lora_rank, args.max_loras) == (VLLM_MAX_LORA_RANK, 1)


def test_lora_limits_reach_vllm(tmp_path: Path) -> None:
    args = vllm_args(lora_modules=f"a={adapter(tmp_path / 'a', rank=64)}", max_lora_rank=64,
                     max_loras=4)
    assert (args.max_lora_rank, args.max_loras) == (64, 4)


def test_no_lora_flags_without_adapters() -> None:
    cfg = engine_config(load_settings(), CPU)
    argv = cli_args(cfg, "/models/x")
    assert not [token for token in argv if "lora" in token]
    assert parse_args(argv).enable_lora is None  # vLLM's "not given"


def test_settings_come_from_the_environment(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    folder = adapter(tmp_path / "pirate", rank=32)
    monkeypatch.setenv("LLM_LORA_MODULES", f"pirate={folder}")
    monkeypatch.setenv("LLM_MAX_LORA_RANK", "32")
    monkeypatch.setenv("LLM_MAX_LORAS", "3")
    monkeypatch.setenv("LLM_ALLOW_RUNTIME_LORA", "true")
    cfg = engine_config(load_settings(), CPU)
    assert cfg.lora_modules == (("pirate", str(folder)),)
    assert (cfg.enable_lora, cfg.max_lora_rank, cfg.max_loras) == (True, 32, 3)
    assert cfg.allow_runtime_lora is True


def test_adapters_from_a_build_argument(tmp_path: Path) -> None:
    folder = adapter(tmp_path / "pirate")
    set_arguments({"lora_modules": f"pirate={folder}", "max_loras": "2"})
    settings = load_settings()
    assert (settings.lora_module_map, settings.max_loras) == ({"pirate": folder}, 2)


def test_adapter_folders_are_made_absolute(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    adapter(tmp_path / "adapters" / "pirate")
    monkeypatch.chdir(tmp_path)
    settings = load_settings(lora_modules="pirate=./adapters/pirate/")
    assert settings.lora_modules == f"pirate={tmp_path / 'adapters' / 'pirate'}"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_settings(lora_modules="p=~/adapters/pirate").lora_module_map == {
        "p": tmp_path / "adapters" / "pirate"}


def test_runtime_loading_alone_enables_lora_without_modules() -> None:
    args = vllm_args(allow_runtime_lora=True)
    assert args.enable_lora is True and not args.lora_modules


def test_runtime_loading_is_set_in_the_engine_environment_either_way() -> None:
    """Off is written too, so a VLLM_ variable left in the operator's environment cannot turn
    the load/unload routes on behind LLM_ALLOW_RUNTIME_LORA's back."""
    assert engine_env(allow_runtime_lora=True)[RUNTIME_LORA_ENV] == "1"
    assert engine_env()[RUNTIME_LORA_ENV] == "0"
    assert engine_config(load_settings(allow_runtime_lora=True), CPU).allow_runtime_lora
    assert not engine_config(load_settings(), CPU).allow_runtime_lora


@pytest.mark.parametrize(
    ("lora_modules", "message"),
    [("pirate", "LoRA module 'pirate' is not name=folder"),
     ("={a}", "is not name=folder"),
     ("pirate=", "LoRA module 'pirate=' is not name=folder"),
     ("pirate={a},pirate={b}", "LoRA module name 'pirate' is given twice"),
     ("pirate={missing}", "LoRA adapter folder {missing} (for 'pirate') does not exist"),
     ("pirate={plain}", "LoRA adapter folder {plain} (for 'pirate') has no "
                        "adapter_config.json: not a PEFT adapter"),
     (f"{PACKAGED_MODEL_ID}={{a}}", f"LoRA module name '{PACKAGED_MODEL_ID}' is the served "
                                    "model's name"),
     ("big={big}", "LoRA adapter 'big' has rank 32, above max_lora_rank (16): set "
                   "max_lora_rank to at least 32"),
     ("patterned={patterned}", "has rank 64, above max_lora_rank (16)"),
     ("broken={broken}", "cannot read the adapter rank (r) from")],
    ids=["no-equals", "no-name", "no-folder", "twice", "missing", "not-peft", "model-name",
         "rank-above-default", "rank-pattern", "broken-config"],
)
def test_bad_adapters_are_refused_as_settings_load(tmp_path: Path, lora_modules: str,
                                                   message: str) -> None:
    folders = {"a": adapter(tmp_path / "a"), "b": adapter(tmp_path / "b"),
               "big": adapter(tmp_path / "big", rank=32),
               "patterned": adapter(tmp_path / "patterned", rank=8, rank_pattern={"q_proj": 64}),
               "broken": adapter(tmp_path / "broken", r="eight"),
               "missing": tmp_path / "missing", "plain": tmp_path / "plain"}
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValidationError, match=re.escape(message.format(**folders))):
        load_settings(lora_modules=lora_modules.format(**folders))


def test_adapter_named_like_a_custom_served_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="'smol' is the served model's name"):
        load_settings(served_model_name="smol", lora_modules=f"smol={adapter(tmp_path / 'a')}")


def test_rank_within_max_lora_rank_is_accepted(tmp_path: Path) -> None:
    folder = adapter(tmp_path / "big", rank=32)
    assert load_settings(lora_modules=f"big={folder}", max_lora_rank=32).max_lora_rank == 32


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"max_lora_rank": 12}, "max_lora_rank must be one of 1, 8, 16, 32, 64, 128, 256, 320, "
                             "512 (vLLM's choices), not 12"),
     ({"max_loras": 0}, "greater than or equal to 1"),
     ({"max_lora_rank": 32, "lora_modules": ""}, "max_lora_rank and max_loras limit LoRA "
                                                 "adapters: set lora_modules"),
     ({"max_loras": 2}, "max_lora_rank and max_loras limit LoRA adapters")],
)
def test_bad_lora_limits_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        load_settings(**settings)


def test_limits_with_runtime_loading_alone_are_accepted() -> None:
    settings = load_settings(allow_runtime_lora=True, max_lora_rank=64, max_loras=2)
    assert (settings.enable_lora, settings.max_lora_rank) == (True, 64)


def test_other_lora_engine_flags_pass_through(tmp_path: Path) -> None:
    args = vllm_args(lora_modules=f"a={adapter(tmp_path / 'a')}",
                     engine_args="--max-cpu-loras 4 --lora-dtype bfloat16")
    assert (args.max_cpu_loras, args.lora_dtype) == (4, "bfloat16")


def test_lora_ranks_are_vllms() -> None:
    from typing import get_args

    from vllm.config.lora import LoRAConfig, MaxLoRARanks

    assert LORA_RANKS == get_args(MaxLoRARanks)
    assert LoRAConfig().max_lora_rank == VLLM_MAX_LORA_RANK
