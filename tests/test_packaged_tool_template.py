"""The packaged model's chat template with tools (``vllm_bento/smollm2_tools.jinja``): the
model's own rendering where there are no tools, tools and tool turns in hermes' format where
there are, and the settings that put it, and vLLM's ``--tool-strict-level parameter``, in
front of the packaged model only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from tests.test_openai_features_config import AVX2_CPU
from tests.test_vllm_surface import CPU_CFG
from vllm_bento.packaged_model import ensure_packaged_model
from vllm_bento.settings import PACKAGED_MODEL_CHAT_TEMPLATE, engine_config, load_settings
from vllm_bento.vllm_entrypoints import cli_args, parse_args

TEMPLATE = PACKAGED_MODEL_CHAT_TEMPLATE.read_text(encoding="utf-8")
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
CALLED = [{"role": "user", "content": "Weather in Paris?"},
          {"role": "assistant", "content": None, "tool_calls": [{
              "id": "call_1", "type": "function",
              "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
          {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """The packaged model's tokenizer, with the model's own template."""
    return AutoTokenizer.from_pretrained(str(ensure_packaged_model().path))


def render(tokenizer: Any, messages: list[Any], template: str | None = TEMPLATE,
           **kwargs: Any) -> str:
    text: str = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template,
                                              **kwargs)
    return text


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Again"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
    [{"role": "user", "content": "a"}, {"role": "system", "content": "late"}],
])
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_without_tools_it_renders_as_the_models_own(tokenizer: Any, messages: list[Any],
                                                    generation_prompt: bool) -> None:
    own = render(tokenizer, messages, None, add_generation_prompt=generation_prompt)
    assert render(tokenizer, messages, add_generation_prompt=generation_prompt) == own


@pytest.mark.parametrize("system", [None, "Be brief."])
def test_tools_calls_and_results_are_in_hermes_format(tokenizer: Any, system: str | None) -> None:
    messages = [{"role": "system", "content": system}, *CALLED] if system else CALLED
    text = render(tokenizer, messages, tools=TOOLS, add_generation_prompt=True)
    first_turn = text.split("<|im_end|>")[0]
    assert first_turn.startswith("<|im_start|>system\n" + (system or "You are a helpful AI"))
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in first_turn
    assert text.count("<|im_start|>system") == 1
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
            '{"city": "Paris"}}\n</tool_call><|im_end|>') in text
    assert "<|im_start|>user\n<tool_response>\n18 C\n</tool_response><|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_a_rendered_call_is_what_the_hermes_parser_reads(tokenizer: Any) -> None:
    """What the model is shown as its own earlier call is what vLLM's hermes parser turns
    into ``tool_calls``: the model learns the format from the conversation."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser

    text = render(tokenizer, CALLED[:2], tools=TOOLS)
    said = text.rsplit("<|im_start|>assistant\n", 1)[1].removesuffix("<|im_end|>\n")
    request = ChatCompletionRequest.model_validate({"model": "m", "messages": [], "tools": TOOLS})
    found = Hermes2ProToolParser(tokenizer, request.tools).extract_tool_calls(said, request)
    assert found.tools_called
    ((name, arguments),) = [(c.function.name, c.function.arguments) for c in found.tool_calls]
    assert (name, arguments) == ("get_weather", '{"city": "Paris"}')


def test_the_packaged_model_gets_the_template_and_strict_tool_arguments() -> None:
    cfg = engine_config(load_settings(), AVX2_CPU)
    assert (cfg.chat_template, cfg.tool_strict_level) == (str(PACKAGED_MODEL_CHAT_TEMPLATE),
                                                          "parameter")
    args = parse_args(cli_args(cfg, "/m"))
    assert (args.chat_template, args.tool_strict_level) == (cfg.chat_template, "parameter")


def test_other_models_keep_their_own_template_and_vllms_strict_level() -> None:
    cfg = engine_config(load_settings(model_id="meta-llama/Llama-3.1-8B-Instruct"), AVX2_CPU)
    assert (cfg.chat_template, cfg.tool_strict_level) == (None, None)
    assert parse_args(cli_args(CPU_CFG, "/m")).tool_strict_level == "auto"


def test_the_operators_choice_wins(tmp_path: Path) -> None:
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages }}")
    cfg = engine_config(load_settings(chat_template=str(template), tool_strict_level="function"),
                        AVX2_CPU)
    assert (cfg.chat_template, cfg.tool_strict_level) == (str(template), "function")
