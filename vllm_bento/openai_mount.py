"""The ASGI app BentoML mounts at ``/v1``: it hands each request to vLLM's OpenAI app once the
engine is up, and answers 503 in the OpenAI error shape before that and after shutdown.

Bodies that are not UTF-8 get a 400 in the OpenAI shape here: vLLM's app would answer
FastAPI's ``{"detail": "There was an error parsing the body"}`` (schemathesis found it). Every
error on ``/v1/messages`` leaves in Anthropic's shape instead (``anthropic_errors``). Chat
messages have the model's control tokens defused here (``vllm_bento.control_tokens``).

It also serves ``/v1/openapi.json``: vLLM's own OpenAPI document, cut down to the ``/v1``
operations reachable here (BentoML's ``/docs.json`` only describes its own routes).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from vllm_bento.errors import as_anthropic_error, is_anthropic, openai_error
from vllm_bento.gate import read_body, replaying, with_header

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.types import Message, Receive, Scope, Send

    from vllm_bento.runtime import Runtime

OPENAPI_PATH = "/v1/openapi.json"


def v1_openapi(app: FastAPI) -> dict[str, Any]:
    """vLLM's OpenAPI document with only the paths under ``/v1``."""
    spec = dict(app.openapi())
    spec["paths"] = {p: ops for p, ops in spec["paths"].items() if p.startswith("/v1/")}
    return spec


class OpenAIMount:
    """Forwards to ``runtime.target`` (vLLM's FastAPI app) while the engine runs."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return  # BentoML owns the process lifespan; the engine starts in on_startup.
        target = self.runtime.target
        if target is None:
            response = openai_error(503, "The model engine is not running.", "service_unavailable")
            await response(scope, receive, send)
            return
        if scope["type"] == "http" and scope["path"] == OPENAPI_PATH:
            await JSONResponse(v1_openapi(target))(scope, receive, send)
            return
        # Reached through Starlette's Mount, root_path is ".../v1" and app_root_path the
        # server's; straight from the gate (``Gate.direct``), root_path is the server's. vLLM's
        # routes carry the /v1 prefix themselves: give vLLM the server's root path.
        child = dict(scope)
        child["root_path"] = scope.get("app_root_path", scope.get("root_path", ""))
        if is_anthropic(scope["path"]):  # every error below, vLLM's and ours
            send = anthropic_errors(send)
        if scope["type"] == "http" and scope.get("method") == "POST":
            # The gate read the body whole, under its size limit, and replays it (a loopback
            # call's body is built by /generate from its own, which the gate bounded).
            body = await read_body(receive)
            if body is not None:
                if (problem := body_problem(body)) is not None:
                    response = openai_error(400, problem, "invalid_request_error")
                    await response(scope, receive, send)
                    return
                tokens = self.runtime.control_tokens
                if tokens is not None and (defused := tokens.defuse_body(body)) is not None:
                    body = defused
                    child["headers"] = with_header(scope["headers"], b"content-length",
                                                   str(len(body)))
                receive = replaying(body, receive)
        await target(child, receive, send)


def anthropic_errors(send: Send) -> Send:
    """``send`` for vLLM's Anthropic route, with every error body in Anthropic's shape and
    types (``errors.as_anthropic_error``). Only an error response is held back, to be
    rewritten whole."""
    start: Message | None = None
    chunks: list[bytes] = []

    async def sending(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start" and message["status"] >= 400:
            start = message
            return
        if start is None or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = as_anthropic_error(start["status"], b"".join(chunks))
        headers = with_header(list(start.get("headers", [])), b"content-length", str(len(body)))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return sending


MAX_BRACKETS_UNCHECKED = 1000
"""Bodies with fewer ``[`` and ``{`` than this cannot nest deeper than Python's JSON parser
goes (its recursion limit, about 1000), so only bigger ones are parsed here first."""


def body_problem(body: bytes) -> str | None:
    """Why vLLM's app could not parse ``body`` and would answer outside the OpenAI shape
    (FastAPI's ``{"detail": "There was an error parsing the body"}``), or None."""
    if not is_utf8(body):
        return "The request body is not UTF-8 encoded JSON."
    if body.count(b"[") + body.count(b"{") >= MAX_BRACKETS_UNCHECKED:
        try:
            json.loads(body)
        except RecursionError:
            return "The request body's JSON is nested too deeply."
        except ValueError:
            return None  # vLLM's own validation answers malformed JSON in the OpenAI shape
    return None


def is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


UNROUTED = "unrouted"
"""The metrics label of a request for a path no route serves."""


class RouteLabels:
    """The paths of an app's routes, for labelling requests: a static route's path as it is,
    a path matching a route with parameters as that route's template."""

    def __init__(self, app: Starlette) -> None:
        routes = [route for route in app.routes if isinstance(route, Route)]
        self.static = frozenset(r.path for r in routes if "{" not in r.path)
        self.templates = [(r.path_regex, r.path) for r in routes if "{" in r.path]

    def label(self, path: str) -> str:
        if path in self.static:
            return path
        for regex, template in self.templates:
            if regex.match(path):
                return template
        return UNROUTED
