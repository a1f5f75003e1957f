"""The corrections to BentoML's error bodies and schema, and vLLM's framework errors."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import pytest
from bentoml.exceptions import BadInput, ServiceUnavailable
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from vllm_bento import bentoml_compat
from vllm_bento.bentoml_compat import (
    BENTOML_API_LOGGER,
    JsonOnlyApis,
    UnwrapErrorList,
    describe_client_error,
    fix_error_detail_schema,
    log_uvicorn_errors_once,
)
from vllm_bento.errors import AsOneWarning, StreamCutOff, describe_cut_off


def run(app: object) -> tuple[int, bytes]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/generate", "headers": []}
    asyncio.run(UnwrapErrorList(app)(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def responding(status: int, content: object) -> object:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse(content, status_code=status)(scope, receive, send)
    return app


def test_bentomls_one_element_error_list_becomes_an_object() -> None:
    status, body = run(responding(400, [{"error": "prompt too long"}]))
    assert status == 400 and json.loads(body) == {"error": "prompt too long"}


def test_other_bodies_pass_untouched() -> None:
    assert run(responding(400, {"error": "x", "detail": []})) == (
        400, b'{"error":"x","detail":[]}')
    assert run(responding(200, [{"error": "model text"}])) == (200, b'[{"error":"model text"}]')


def test_error_detail_schema_allows_the_list_bentoml_sends() -> None:
    from bentoml._internal.service.openapi.utils import exception_components_schema

    fix_error_detail_schema()
    detail = exception_components_schema()["InvalidArgument"].properties["detail"]
    assert detail.type is None and detail.oneOf is not None


def test_generate_refuses_non_json_bodies_with_415() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Route

    async def ok(request: object) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = JsonOnlyApis(Starlette(routes=[Route("/generate", ok, methods=["POST"])]),
                       paths=("/generate",))
    client = TestClient(app)
    assert client.post("/generate", headers={"content-type": "multipart/form-data"}).status_code \
        == 415
    assert client.post("/generate", json={}).status_code == 200
    assert client.post("/generate", content=b"{}").status_code == 200


class Input(BaseModel):
    max_tokens: int


def logged(exc: BaseException, caplog: pytest.LogCaptureFixture,
           logger_name: str = BENTOML_API_LOGGER,
           describe: Callable[[logging.LogRecord, BaseException], str | None]
           = describe_client_error,
           message: tuple[str, ...] = ("Exception on %s [%s]", "/generate", "POST"),
           ) -> logging.LogRecord:
    """What a library logging ``exc`` with ``message`` (by default BentoML's API wrapper) ends up
    logging through ``AsOneWarning(describe)``."""
    logger = logging.getLogger(logger_name)
    only = AsOneWarning(describe)
    logger.addFilter(only)
    before = len(caplog.records)
    try:
        try:
            raise exc
        except BaseException:  # logged as the library does
            logger.exception(*message)
    finally:
        logger.removeFilter(only)
    (record,) = caplog.records[before:]
    return record


def test_a_client_validation_error_is_one_warning_line(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValidationError) as invalid:
        Input.model_validate_json(b'{"max_tokens": "many"}')
    record = logged(invalid.value, caplog)
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.getMessage().startswith("Client error on /generate [POST]: max_tokens: ")
    assert "\n" not in caplog.text.strip()


def test_a_4xx_bentoml_error_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    record = logged(BadInput("prompt too long"), caplog)
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "Client error on /generate [POST]: 400 prompt too long"


@pytest.mark.parametrize("exc", [ServiceUnavailable("engine gone"), RuntimeError("bug")])
def test_server_errors_keep_their_traceback(exc: Exception,
                                            caplog: pytest.LogCaptureFixture) -> None:
    record = logged(exc, caplog)
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "Traceback" in caplog.text


def test_uvicorn_logs_a_deliberate_cut_off_as_one_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    cut, bug = (logged(exc, caplog, "uvicorn.error", describe_cut_off,
                       ("Exception in ASGI application\n",))
                for exc in (StreamCutOff("time limit of 20 s"), RuntimeError("bug")))
    assert (cut.levelno, cut.exc_info) == (logging.WARNING, None)
    assert cut.getMessage() == "Stream cut off without its final chunk: time limit of 20 s"
    assert bug.levelno == logging.ERROR and bug.exc_info is not None


def test_uvicorn_errors_stop_propagating_only_once_they_have_a_handler(
        monkeypatch: pytest.MonkeyPatch) -> None:
    logger = logging.getLogger("uvicorn.error")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)
    log_uvicorn_errors_once()
    assert logger.propagate  # no handler of its own: the root's is all it has
    monkeypatch.setattr(logger, "handlers", [logging.NullHandler()])
    log_uvicorn_errors_once()
    assert not logger.propagate


def test_bentomls_request_metrics_are_relabelled_by_the_given_function() -> None:
    """The patch wraps what BentoML 1.4.40's metrics middleware sets up; each metric it
    labels by endpoint gets the label function's answer."""
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    seen: list[dict[str, object]] = []

    class Metric:
        def labels(self, **kwargs: object) -> None:
            seen.append(kwargs)

    def fake_setup(self: RunnerTrafficMetricsMiddleware) -> None:
        for name in ("metrics_request_total", "metrics_request_duration",
                     "metrics_request_in_progress"):
            setattr(self, name, Metric())

    original = RunnerTrafficMetricsMiddleware._setup
    RunnerTrafficMetricsMiddleware._setup = fake_setup  # type: ignore[method-assign,assignment]
    try:
        bentoml_compat.bound_metric_endpoints(lambda path: "bounded")
        middleware = RunnerTrafficMetricsMiddleware.__new__(RunnerTrafficMetricsMiddleware)
        middleware._setup()
        for name in ("metrics_request_total", "metrics_request_duration",
                     "metrics_request_in_progress"):
            getattr(middleware, name).labels(endpoint="/made-up-1", service_name="s")
    finally:
        RunnerTrafficMetricsMiddleware._setup = original  # type: ignore[method-assign]
    assert seen == [{"endpoint": "bounded", "service_name": "s"}] * 3
