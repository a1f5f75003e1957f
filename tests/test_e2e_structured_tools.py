"""Structured output and tool calls through the official SDK against the served instance.

The default model is tiny, so these prove what the service guarantees rather than what the
model knows: constrained decoding makes its JSON parse and validate, and the configured
tool-call parser (hermes, the packaged model's default) turns its tool-call text into
``tool_calls``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam
from pydantic import BaseModel, Field

from tests.conftest import MODEL

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
