"""Unit tier for the OpenAI features' configuration: the tool-call parser and chat template
settings reach vLLM's own parser as ``vllm serve`` flags, and the root forwarder routes only
vLLM's ``/tokenize`` and ``/detokenize``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send

from tests.fakes import FakeRuntime
from tests.test_vllm_surface import CPU_CFG
from vllm_bento.hardware import Hardware
from vllm_bento.openai_mount import OpenAIMount
from vllm_bento.root_mount import root_routes
from vllm_bento.settings import engine_config, load_settings
from vllm_bento.vllm_entrypoints import cli_args, parse_args

AVX2_CPU = Hardware(gpu_count=0, cpu_flags=frozenset({"avx2"}))
TEMPLATE = Path(__file__).parent / "data" / "pirate_chat_template.jinja"


def test_packaged_model_gets_the_hermes_parser() -> None:
    assert engine_config(load_settings(), AVX2_CPU).tool_call_parser == "hermes"


def test_other_models_get_no_parser_unless_configured() -> None:
    llama = load_settings(model_id="meta-llama/Llama-3.1-8B-Instruct")
    assert engine_config(llama, AVX2_CPU).tool_call_parser is None
    configured = load_settings(model_id="meta-llama/Llama-3.1-8B-Instruct",
                               tool_call_parser="llama3_json")
    assert engine_config(configured, AVX2_CPU).tool_call_parser == "llama3_json"


def test_parser_and_template_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_TOOL_CALL_PARSER", "llama3_json")
    monkeypatch.setenv("LLM_CHAT_TEMPLATE", str(TEMPLATE))
    cfg = engine_config(load_settings(), AVX2_CPU)
    assert (cfg.tool_call_parser, cfg.chat_template) == ("llama3_json", str(TEMPLATE))


def test_a_parser_enables_auto_tool_choice_in_vllm() -> None:
    args = parse_args(cli_args(replace(CPU_CFG, tool_call_parser="llama3_json"), "/m"))
    assert (args.enable_auto_tool_choice, args.tool_call_parser) == (True, "llama3_json")


def test_no_parser_no_tool_flags() -> None:
    args = parse_args(cli_args(CPU_CFG, "/m"))
    assert (args.enable_auto_tool_choice, args.tool_call_parser) == (False, None)
    assert args.chat_template is None


def test_one_structured_output_backend_serves_every_request() -> None:
    """Pinned, not vLLM's per-request ``auto``: see test_e2e_structured_tools for why."""
    args = parse_args(cli_args(CPU_CFG, "/m"))
    assert args.structured_outputs_config.backend == "xgrammar"


@pytest.mark.parametrize("flags", [
    ("--structured-outputs-config", '{"backend": "guidance"}'),
    ("--structured-outputs-config.backend=guidance",),
    ("--structured_outputs_config.backend", "guidance"),
])
def test_operators_structured_outputs_config_replaces_the_default(flags: tuple[str, ...]) -> None:
    args = parse_args(cli_args(replace(CPU_CFG, extra_args=flags), "/m"))
    assert args.structured_outputs_config.backend == "guidance"


def test_reasoning_parser_reaches_vllm() -> None:
    assert not parse_args(cli_args(CPU_CFG, "/m")).reasoning_parser
    args = parse_args(cli_args(replace(CPU_CFG, reasoning_parser="qwen3"), "/m"))
    assert args.reasoning_parser == "qwen3"
    assert engine_config(load_settings(reasoning_parser="deepseek_r1"),
                         AVX2_CPU).reasoning_parser == "deepseek_r1"


def test_unknown_reasoning_parser_is_refused_listing_vllms() -> None:
    with pytest.raises(ValidationError, match="'no-such' is not one of vLLM's: .*qwen3"):
        load_settings(reasoning_parser="no-such")


def test_chat_template_file_and_inline_reach_vllm() -> None:
    args = parse_args(cli_args(replace(CPU_CFG, chat_template=str(TEMPLATE)), "/m"))
    assert args.chat_template == str(TEMPLATE)
    inline = TEMPLATE.read_text()
    assert parse_args(cli_args(replace(CPU_CFG, chat_template=inline), "/m")).chat_template \
        == inline


def test_missing_chat_template_file_is_refused_before_the_engine_starts() -> None:
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError, match="doesn't exist"):
        parse_args(cli_args(replace(CPU_CFG, chat_template="/no/such/template"), "/m"))


class EchoApp:
    """Stands in for vLLM's app: answers with the path and root_path it was given."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from starlette.responses import JSONResponse

        body = {"path": scope["path"], "root_path": scope.get("root_path")}
        await JSONResponse(body)(scope, receive, send)


def test_root_routes_forward_tokenize_and_detokenize_only() -> None:
    forwarder = OpenAIMount(FakeRuntime(EchoApp()))
    with TestClient(root_routes(forwarder)) as client:
        for path in ("/tokenize", "/detokenize"):
            assert client.post(path, json={}).json() == {"path": path, "root_path": ""}
        assert client.get("/docs.json").status_code == 404  # not ours: left to BentoML


def test_root_routes_answer_503_in_openai_shape_before_the_engine() -> None:
    with TestClient(root_routes(OpenAIMount(FakeRuntime()))) as client:
        response = client.post("/tokenize", json={})
    assert response.status_code == 503
    assert response.json()["error"]["message"]
