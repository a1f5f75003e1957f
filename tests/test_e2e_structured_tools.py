"""Structured output and tool calls through the official SDK against the served instance.

The default model is tiny, so these prove what the service guarantees rather than what the
model knows: constrained decoding makes its JSON parse and validate, and the configured
tool-call parser (hermes, the packaged model's default) turns its tool-call text into
``tool_calls``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import anthropic
import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam
from pydantic import BaseModel, Field

from tests.conftest import MODEL
from tests.served import Served

pytestmark = pytest.mark.e2e

PIRATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "rank": {"type": "string", "enum": ["captain", "mate", "sailor"]},
        "ships": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["name", "age", "rank", "ships"],
    "additionalProperties": False,
}
WEATHER_PARAMS: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"},
                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME_PARAMS: dict[str, Any] = {
    "type": "object", "properties": {"city": {"type": "string"}},
    "required": ["city"], "additionalProperties": False,
}
# strict: the OpenAI way to ask that arguments follow the schema; vLLM then constrains them.
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather",
                                      "parameters": WEATHER_PARAMS, "strict": True}},
    {"type": "function", "function": {"name": "get_time", "description": "Local time",
                                      "parameters": TIME_PARAMS, "strict": True}},
]
PARAMS = {"get_weather": WEATHER_PARAMS, "get_time": TIME_PARAMS}
WEATHER: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the weather in Paris?"}]


def chat(client: openai.OpenAI, messages: list[ChatCompletionMessageParam],
         **kwargs: Any) -> ChatCompletion:
    params: dict[str, Any] = {"model": MODEL, "messages": messages, "max_tokens": 200,
                              "temperature": 0, **kwargs}
    reply: ChatCompletion = client.chat.completions.create(**params)
    return reply


def streamed_tool_calls(client: openai.OpenAI, **kwargs: Any) -> tuple[dict[int, dict[str, str]],
                                                                        str | None]:
    """The tool calls a stream assembles, by index, as ``{"name", "arguments"}``; and the
    finish reason."""
    params: dict[str, Any] = {"model": MODEL, "messages": WEATHER, "max_tokens": 200,
                              "temperature": 0, "stream": True, "tools": TOOLS, **kwargs}
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in client.chat.completions.create(**params):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                if delta.function is not None:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
    return calls, finish


def assert_valid_call(name: str, arguments: str) -> None:
    assert name in PARAMS, name
    jsonschema.validate(json.loads(arguments), PARAMS[name])


def test_json_object_response_parses(openai_client: openai.OpenAI) -> None:
    ask: list[ChatCompletionMessageParam] = [{"role": "user", "content":
        'Reply with a JSON object whose key "capital" holds the capital of France.'}]
    reply = chat(openai_client, ask, response_format={"type": "json_object"})
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)


def test_json_schema_strict_response_validates(openai_client: openai.OpenAI) -> None:
    ask: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Describe a pirate as JSON."}]
    fmt = {"type": "json_schema",
           "json_schema": {"name": "pirate", "schema": PIRATE_SCHEMA, "strict": True}}
    reply = chat(openai_client, ask, response_format=fmt)
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content or ""), PIRATE_SCHEMA)


class Pirate(BaseModel):
    name: str
    age: int
    rank: Literal["captain", "mate", "sailor"]
    ships: Annotated[list[str], Field(max_length=3)]


def test_sdk_parse_into_a_pydantic_model(openai_client: openai.OpenAI) -> None:
    """The SDK's own structured-output helper: it sends the model's strict JSON schema and
    parses the answer back into the model."""
    reply = openai_client.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "Describe a pirate as JSON."}],
        max_tokens=200, temperature=0, response_format=Pirate)
    pirate = reply.choices[0].message.parsed
    assert isinstance(pirate, Pirate) and len(pirate.ships) <= 3


def test_named_tool_choice_calls_that_tool(openai_client: openai.OpenAI) -> None:
    choice = {"type": "function", "function": {"name": "get_time"}}
    reply = chat(openai_client, WEATHER, tools=TOOLS, tool_choice=choice)
    (call,) = reply.choices[0].message.tool_calls or []
    assert call.type == "function" and call.id
    assert call.function.name == "get_time"
    assert_valid_call(call.function.name, call.function.arguments)
    calls, _ = streamed_tool_calls(openai_client, tool_choice=choice)
    assert [c["name"] for c in calls.values()] == ["get_time"]
    assert_valid_call("get_time", calls[0]["arguments"])


def test_required_tool_choice_calls_a_tool(openai_client: openai.OpenAI) -> None:
    reply = chat(openai_client, WEATHER, tools=TOOLS, tool_choice="required")
    calls = reply.choices[0].message.tool_calls or []
    assert calls and reply.choices[0].finish_reason == "tool_calls"
    for call in calls:
        assert call.type == "function"
        assert_valid_call(call.function.name, call.function.arguments)
    streamed, finish = streamed_tool_calls(openai_client, tool_choice="required")
    assert streamed and finish == "tool_calls"
    for call_ in streamed.values():
        assert_valid_call(call_["name"], call_["arguments"])


def test_auto_tool_choice_answers(openai_client: openai.OpenAI) -> None:
    """With a parser configured, ``auto`` (the OpenAI default when tools are given) is served:
    the model may answer in text or call a tool (the tiny model mostly answers)."""
    reply = chat(openai_client, WEATHER, tools=TOOLS, max_tokens=32)
    message = reply.choices[0].message
    assert message.content or message.tool_calls
    for call in message.tool_calls or []:
        assert call.type == "function" and call.function.name in PARAMS


# What a hermes-format model writes when it calls a tool; forcing the tiny model to write it
# shows the parser at work without depending on the model choosing to call a tool.
HERMES_CALL = (r'<tool_call>\n\{"name": "get_weather", "arguments": '
               r'\{"city": "[A-Z][a-z]+", "unit": "(celsius|fahrenheit)"\}\}\n</tool_call>')


def test_auto_tool_choice_parses_the_models_tool_call(openai_client: openai.OpenAI) -> None:
    forced = {"structured_outputs": {"regex": HERMES_CALL}}
    reply = chat(openai_client, WEATHER, tools=TOOLS, tool_choice="auto", extra_body=forced)
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls"
    assert not message.content, "the tool-call markup must not leak into the content"
    (call,) = message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert_valid_call(call.function.name, call.function.arguments)
    streamed, finish = streamed_tool_calls(openai_client, tool_choice="auto", extra_body=forced)
    assert finish == "tool_calls" and [c["name"] for c in streamed.values()] == ["get_weather"]
    assert json.loads(streamed[0]["arguments"]) == json.loads(call.function.arguments)


class Crate(BaseModel):
    """A schema with a keyword xgrammar does not support (``multipleOf``)."""

    bottles: Annotated[int, Field(multiple_of=5)]


def test_constraints_the_backend_cannot_compile_are_400s_that_change_nothing_after(
        openai_client: openai.OpenAI) -> None:
    """One structured-output backend serves every request: a constraint it cannot compile is
    refused with a 400 saying why, whatever was served before, and requests after it are served
    as before (vLLM's ``auto`` backend locked in whichever backend the first request needed,
    turning either these or the tool choices after them into 500s)."""
    ask: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say foo."}]
    with pytest.raises(openai.BadRequestError, match="regex"):
        chat(openai_client, ask, max_tokens=8,
             extra_body={"structured_outputs": {"regex": "foo**"}})
    with pytest.raises(openai.BadRequestError, match="not supported by xgrammar"):
        openai_client.chat.completions.parse(model=MODEL, messages=ask, max_tokens=16,
                                             response_format=Crate)
    required = chat(openai_client, WEATHER, tools=TOOLS, tool_choice="required")
    assert required.choices[0].message.tool_calls
    named = chat(openai_client, WEATHER, tools=TOOLS,
                 tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert [c.function.name for c in named.choices[0].message.tool_calls or []] == ["get_time"]
    test_sdk_parse_into_a_pydantic_model(openai_client)


# -- tools the packaged model sees, and forced calls without `strict` ------------------------

# Not strict: clients (LangChain's bind_tools, the anthropic SDK) rarely mark tools so. A
# bounded city keeps every constrained call short enough to finish within max_tokens.
LOOSE_WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 24},
                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
LOOSE_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather", "parameters": LOOSE_WEATHER}}]
PROMPTS = ["What's the weather in Paris?", "Is it cold in Oslo, in fahrenheit?",
           "Should I take an umbrella in London?", "How warm is it in Cairo right now?"]


def test_the_packaged_model_sees_tools_calls_and_results(openai_client: openai.OpenAI) -> None:
    """Its own template drops them (the prompt was the same with or without tools); the
    service's renders each (vllm_bento/smollm2_tools.jinja)."""
    def prompt_tokens(messages: list[Any], **kwargs: Any) -> int:
        reply = chat(openai_client, messages, max_tokens=1, **kwargs)
        assert reply.usage is not None
        return reply.usage.prompt_tokens

    bare = prompt_tokens(WEATHER)
    with_tools = prompt_tokens(WEATHER, tools=LOOSE_TOOLS)
    called = [*WEATHER, {"role": "assistant", "content": None, "tool_calls": [{
        "id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]}]
    answered = [*called, {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}]
    with_call = prompt_tokens(called, tools=LOOSE_TOOLS)
    with_result = prompt_tokens(answered, tools=LOOSE_TOOLS)
    assert bare < with_tools < with_call < with_result, (bare, with_tools, with_call,
                                                        with_result)


@pytest.mark.parametrize("tool_choice", [
    "required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_calls_hold_to_the_schema_without_strict(openai_client: openai.OpenAI,
                                                        tool_choice: Any) -> None:
    """Sampled, not greedy: each call's arguments are an object valid against the tool's
    schema because the engine constrains them (``--tool-strict-level parameter``), not by the
    model's luck (unconstrained, 0 of 16 were valid: bench/tool_calls.py)."""
    for seed, prompt in enumerate(PROMPTS):
        reply = chat(openai_client, [{"role": "user", "content": prompt}], tools=LOOSE_TOOLS,
                     tool_choice=tool_choice, parallel_tool_calls=False, temperature=1.0,
                     seed=seed, max_tokens=128)
        (call,) = reply.choices[0].message.tool_calls or []
        assert call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), LOOSE_WEATHER)


@pytest.mark.parametrize("tool_choice", [{"type": "any"}, {"type": "tool", "name": "get_weather"}])
def test_anthropic_forced_tool_use_holds_to_the_schema(server: Served,
                                                       tool_choice: Any) -> None:
    """On /v1/messages the anthropic SDK got a 400 for the server's own output 7 of 8 times
    (an input that was not an object)."""
    client = anthropic.Anthropic(base_url=server.url, api_key="none", max_retries=0)
    tool: Any = {"name": "get_weather", "description": "Current weather",
                 "input_schema": LOOSE_WEATHER}
    one_call: Any = {**tool_choice, "disable_parallel_tool_use": True}
    for prompt in PROMPTS:
        reply = client.messages.create(
            model=MODEL, max_tokens=256, tools=[tool], extra_body={"temperature": 1.0},
            tool_choice=one_call,
            messages=[{"role": "user", "content": prompt}])
        uses = [block for block in reply.content if block.type == "tool_use"]
        assert uses and uses[0].name == "get_weather", reply.content
        jsonschema.validate(uses[0].input, LOOSE_WEATHER)
