"""Forced tool calls against a running server: how many give arguments a client can use.

    python -m bench.tool_calls http://localhost:3000 [--rounds 1]

Each round sends 16 forced calls on ``/v1/chat/completions`` through the OpenAI SDK (8 prompts,
each with ``tool_choice: "required"`` and with the function named) and 8 on ``/v1/messages``
through the ``anthropic`` SDK (``tool_choice`` ``any``), with the model's default sampling, and
prints how many gave an object valid against the tool's schema, how many gave something else
(not an object, or off the schema), how many made no call and how many were errors. It prints
numbers; it asserts nothing (``tests/test_e2e_structured_tools.py`` holds the guarantees).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

import anthropic
import jsonschema
import openai

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"},
                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [{"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": WEATHER}}]
PROMPTS = [
    "What's the weather in Paris?", "Is it cold in Oslo today, in fahrenheit?",
    "Tell me the weather for Tokyo in celsius.", "How warm is it in Cairo?",
    "Weather in New York please.", "Should I take an umbrella in London?",
    "What is the temperature in Sydney right now?", "Check the weather in Lima for me.",
]


def grade(arguments: Any) -> str:
    """``valid`` (an object valid against WEATHER), or what is wrong with it."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return "not JSON"
    if not isinstance(arguments, dict):
        return "not an object"
    try:
        jsonschema.validate(arguments, WEATHER)
    except jsonschema.ValidationError:
        return "off the schema"
    return "valid"


def openai_round(client: openai.OpenAI, model: str) -> Counter[str]:
    seen: Counter[str] = Counter()
    for prompt in PROMPTS:
        choices: list[Any] = ["required",
                              {"type": "function", "function": {"name": "get_weather"}}]
        for choice in choices:
            try:
                reply = client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": prompt}], tools=TOOLS,
                    tool_choice=choice, max_tokens=128)
            except openai.APIStatusError as exc:
                seen[f"error {exc.status_code}"] += 1
                continue
            calls = reply.choices[0].message.tool_calls or []
            function = getattr(calls[0], "function", None) if calls else None
            seen[grade(function.arguments) if function else "no call"] += 1
    return seen


def anthropic_round(url: str, model: str) -> Counter[str]:
    client = anthropic.Anthropic(base_url=url, api_key="none", max_retries=0)
    tool: Any = {"name": "get_weather", "description": "The current weather in a city.",
            "input_schema": WEATHER}
    seen: Counter[str] = Counter()
    for prompt in PROMPTS:
        try:
            reply = client.messages.create(
                model=model, max_tokens=128, tools=[tool],
                tool_choice={"type": "any"}, messages=[{"role": "user", "content": prompt}])
        except anthropic.APIStatusError as exc:
            seen[f"error {exc.status_code}"] += 1
            continue
        uses = [block for block in reply.content if block.type == "tool_use"]
        seen[grade(uses[0].input) if uses else "no call"] += 1
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the server's base URL, e.g. http://localhost:3000")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    client = openai.OpenAI(base_url=f"{args.url}/v1", api_key="none", max_retries=0,
                           timeout=300)
    model = client.models.list().data[0].id
    chat: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    for _ in range(args.rounds):
        chat += openai_round(client, model)
        messages += anthropic_round(args.url, model)
    print(json.dumps({"model": model, "chat_completions_forced": dict(chat),
                      "messages_any": dict(messages)}, indent=1))


if __name__ == "__main__":
    main()
