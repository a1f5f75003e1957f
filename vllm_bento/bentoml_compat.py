"""Corrections to BentoML 1.4.40 (pinned in requirements), each with the reason it exists.

- The OpenAPI document (``/docs.json``) types the ``detail`` of BentoML's error bodies as a
  string, but BentoML's own 400 for an invalid input sends pydantic's list of errors there
  (``[{"loc": ["max_tokens"], "msg": ..., "type": ...}]``). Schemathesis rightly reported the
  mismatch; the schema is widened to what BentoML sends.
- A ``BentoMLException`` with a 4xx status leaves as ``[{"error": ...}]``: BentoML builds the
  body as ``({"error": str(exc)},)``, a one-element tuple, where an object was meant (and where
  its schema says object). ``UnwrapErrorList`` sends the object itself.
- A ``multipart/form-data`` request without a boundary makes BentoML answer 500 (found by
  schemathesis). ``/generate`` takes JSON only, so ``JsonOnlyApis`` answers any other declared
  content type with 415 before BentoML parses the body.
- BentoML logs every exception of an API at ERROR with its traceback, a client's invalid input
  (400) included, so one bad client floods the log and trips alerts. Those become one WARNING
  line naming what was wrong (``describe_client_error``); server errors keep their traceback.
- BentoML's server logging config gives ``uvicorn.error`` the same handler as the root logger
  and lets it propagate there, so each of its lines is printed twice. ``log_uvicorn_errors_once``
  stops the propagation.
- BentoML's request metrics take their ``endpoint`` label from the raw path, before any route
  or the gate is reached: 5000 unauthenticated requests to made-up paths added 5000 series,
  265 MB to the worker and 5 s to every ``/metrics`` scrape (a tester found it).
  ``bound_metric_endpoints`` maps each path to a label from a bounded set first.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from bentoml.exceptions import BentoMLException
from pydantic import ValidationError
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vllm_bento.errors import AsOneWarning
from vllm_bento.gate import header


def fix_error_detail_schema() -> None:
    from bentoml._internal.service.openapi.specification import Schema
    from bentoml._internal.service.openapi.utils import exception_components_schema

    detail = Schema(
        title="Error Detail",
        description="A message, or for invalid input pydantic's list of errors "
        "(each with `loc`, `msg`, `type`).",
        oneOf=[Schema(type="string"), Schema(type="array", items=Schema(type="object"))],
    )
    for component in exception_components_schema().values():
        if component.properties is not None and "detail" in component.properties:
            component.properties["detail"] = detail


class UnwrapErrorList:
    """ASGI middleware: a 4xx JSON body that is a one-element list of ``{"error": ...}`` is sent
    as that object. Other responses pass through untouched (streams are never held back)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/v1/"):
            # vLLM's errors are objects already; its streams need no extra hop per chunk.
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def hold_errors(message: Message) -> None:
            if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
                held.append(message)
                return
            if held and message["type"] == "http.response.body":
                held.append(message)
                if not message.get("more_body", False):
                    for m in unwrapped(held):
                        await send(m)
                return
            await send(message)

        await self.app(scope, receive, hold_errors)


def unwrapped(messages: list[Message]) -> list[Message]:
    """The held error response, its body unwrapped when it is BentoML's one-element list."""
    start, body = messages[0], b"".join(m.get("body", b"") for m in messages[1:])
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict) \
            and "error" in data[0]:
        body = json.dumps(data[0]).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        start = {**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
    return [start, {"type": "http.response.body", "body": body, "more_body": False}]


class JsonOnlyApis:
    """ASGI middleware: POSTs to ``paths`` must be JSON (or carry no Content-Type, which BentoML
    reads as JSON); others get 415."""

    def __init__(self, app: ASGIApp, paths: tuple[str, ...]) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.paths and not _is_json(scope):
            body = {"error": "Content-Type must be application/json."}
            await JSONResponse(body, status_code=415)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _is_json(scope: Scope) -> bool:
    content_type = header(scope, b"content-type")
    if content_type is None:
        return True
    media = content_type.split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


BENTOML_API_LOGGER = "bentoml._internal.server.http_app"  # logs "Exception on <path> [<method>]"


def describe_client_error(record: logging.LogRecord, exc: BaseException) -> str | None:
    """BentoML's "Exception on <path> [<method>]" for a client's error, as one line saying what
    the client got wrong; None for anything else."""
    if isinstance(exc, ValidationError):
        what = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    elif isinstance(exc, BentoMLException) and exc.error_code < 500:
        what = f"{exc.error_code.value} {exc}"
    else:
        return None
    if not (isinstance(record.args, tuple) and len(record.args) == 2):
        return None
    path, method = record.args
    return f"Client error on {path} [{method}]: {what}"


def log_client_errors_as_warnings() -> None:
    logging.getLogger(BENTOML_API_LOGGER).addFilter(AsOneWarning(describe_client_error))


def log_uvicorn_errors_once() -> None:
    logger = logging.getLogger("uvicorn.error")
    if logger.handlers:  # BentoML's config is in place (never leave the logger without one)
        logger.propagate = False


class _Relabelled:
    """A prometheus metric whose ``labels(endpoint=...)`` passes the endpoint through
    ``label`` first."""

    def __init__(self, metric: Any, label: Callable[[str], str]) -> None:
        self._metric = metric
        self._label = label

    def labels(self, *args: Any, **kwargs: Any) -> Any:
        if "endpoint" in kwargs:
            kwargs["endpoint"] = self._label(kwargs["endpoint"])
        return self._metric.labels(*args, **kwargs)


def bound_metric_endpoints(label: Callable[[str], str]) -> None:
    """Label BentoML's per-request metrics (count, duration, in progress) with ``label(path)``
    instead of the path itself."""
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    setup = RunnerTrafficMetricsMiddleware._setup
    if getattr(setup, "relabelled", False):
        return

    def relabelled_setup(self: Any, *args: Any, **kwargs: Any) -> None:
        setup(self, *args, **kwargs)
        for name in ("metrics_request_total", "metrics_request_duration",
                     "metrics_request_in_progress"):
            setattr(self, name, _Relabelled(getattr(self, name), label))

    relabelled_setup.relabelled = True  # type: ignore[attr-defined]
    RunnerTrafficMetricsMiddleware._setup = relabelled_setup  # type: ignore[method-assign]


def worker_id() -> int | None:
    """BentoML's id of this service worker (1 to ``workers``, circus' ``WID``), which its worker
    script sets before it imports the service; None outside ``bentoml serve``."""
    from bentoml._internal.context import server_context

    return server_context.worker_index
