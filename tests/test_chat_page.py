"""The chat page's JavaScript in headless Chromium, with the server faked by Playwright routes:
the error cases a healthy engine will not produce on demand (401 without an API key, an error
frame in the middle of a stream, a stream cut off, a proxy's plain-text error). Stop is tested
against a fake server of its own: a route answers with its whole body at once, so it cannot
hold a stream open for the page to abort."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

import pytest
import uvicorn
from playwright.sync_api import Browser, Page, Route, expect
from starlette import routing
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.testclient import TestClient

from tests.browser import DESKTOP, chat_page, json_sent
from vllm_bento.chat_page import chat_routes

ORIGIN = "http://chat.test"  # never resolved: every request to it is answered by a route
MODEL = "fake/model"
KEY = "sk-test"
UNAUTHORIZED = {"error": {"message": "Invalid or missing API key.", "type": "AuthenticationError",
                          "param": None, "code": 401}}

Handler = Callable[[Route], None]


def sse(*events: object, done: bool = True) -> str:
    """An OpenAI-style event stream of `events`, ended by `data: [DONE]` unless `done` is False."""
    frames = [f"data: {json.dumps(e)}\n\n" for e in events] + (["data: [DONE]\n\n"] if done else [])
    return "".join(frames)


def delta(text: str) -> dict[str, object]:
    return {"object": "chat.completion.chunk", "model": MODEL,
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


def stream(body: str) -> Handler:
    return lambda route: route.fulfill(status=200, body=body, content_type="text/event-stream")


def authorized(route: Route) -> bool:
    return route.request.headers.get("authorization") == f"Bearer {KEY}"


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page whose origin serves the real chat app's response and a one-model `/v1/models`."""
    served = TestClient(Starlette(routes=chat_routes())).get("/chat")
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.route(f"{ORIGIN}/chat/", lambda route: route.fulfill(
        status=served.status_code, body=served.text, headers=dict(served.headers)))
    page.route(f"{ORIGIN}/v1/models", lambda route: route.fulfill(
        json={"object": "list", "data": [{"id": MODEL, "object": "model"}]}))
    yield page
    context.close()


def open_chat(page: Page, completions: Handler) -> list[Route]:
    """Opens the page with `completions` answering `/v1/chat/completions`; returns the routes
    it handled, to look at what the page sent."""
    seen: list[Route] = []

    def handle(route: Route) -> None:
        seen.append(route)
        completions(route)

    page.route(f"{ORIGIN}/v1/chat/completions", handle)
    page.goto(f"{ORIGIN}/chat/")
    expect(page.locator("#model")).to_have_text(f"Model: {MODEL}")
    return seen


def send(page: Page, text: str) -> None:
    page.get_by_label("Message").fill(text)
    page.get_by_role("button", name="Send").click()


def test_streamed_deltas_become_the_answer(page: Page) -> None:
    seen = open_chat(page, stream(sse(delta("Ahoy"), delta(", matey"), delta("!"))))
    send(page, "Hello")
    expect(page.locator(".msg.assistant")).to_have_text("Ahoy, matey!")
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    body = json_sent(seen[0].request)
    assert body["model"] == MODEL and body["stream"] is True
    assert body["messages"] == [{"role": "user", "content": "Hello"}]
    assert "authorization" not in seen[0].request.headers, "no key entered, none sent"


def test_401_asks_for_an_api_key_which_is_then_sent(page: Page) -> None:
    def completions(route: Route) -> None:
        if authorized(route):
            stream(sse(delta("Welcome aboard.")))(route)
        else:
            route.fulfill(status=401, json=UNAUTHORIZED)

    open_chat(page, completions)
    send(page, "Hello")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Error 401: Invalid or missing API key.")
    expect(alert).to_contain_text("Enter a valid API key under Settings.")
    expect(page.get_by_label("API key")).to_be_focused()
    expect(page.get_by_label("Message")).to_have_value("Hello")  # given back to send again
    expect(page.locator(".msg")).to_have_count(0)

    page.get_by_label("API key").fill(KEY)
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".msg.assistant")).to_have_text("Welcome aboard.")
    expect(alert).to_be_hidden()


def test_models_behind_a_key_load_once_it_is_entered(page: Page) -> None:
    def models(route: Route) -> None:
        if authorized(route):
            route.fulfill(json={"object": "list", "data": [{"id": "keyed/model"}]})
        else:
            route.fulfill(status=401, json=UNAUTHORIZED)

    page.route(f"{ORIGIN}/v1/models", models)
    page.goto(f"{ORIGIN}/chat/")
    expect(page.get_by_role("alert")).to_contain_text("Error 401")
    expect(page.locator("#model")).to_have_text("Model: unavailable")
    page.get_by_label("API key").fill(KEY)
    page.get_by_label("API key").press("Tab")
    expect(page.locator("#model")).to_have_text("Model: keyed/model")
    expect(page.get_by_role("alert")).to_be_hidden()


@pytest.mark.parametrize(("status", "body", "content_type", "shown"), [
    (400, json.dumps({"error": {"message": "max_tokens is too large", "code": 400}}),
     "application/json", "Error 400: max_tokens is too large"),
    (503, json.dumps({"detail": "Service Unavailable"}), "application/json",
     "Error 503: Service Unavailable"),
    (502, "Bad gateway", "text/plain", "Error 502: Bad gateway"),
])
def test_error_status_is_shown_with_the_servers_reason(
        page: Page, status: int, body: str, content_type: str, shown: str) -> None:
    open_chat(page, lambda route: route.fulfill(status=status, body=body,
                                                content_type=content_type))
    send(page, "Hello")
    expect(page.get_by_role("alert")).to_have_text(shown)
    expect(page.get_by_role("button", name="Send")).to_be_enabled()


def test_error_frame_mid_stream_is_shown_after_the_partial_answer(page: Page) -> None:
    error = {"error": {"message": "The engine died.", "type": "InternalServerError", "code": 500}}
    open_chat(page, stream(sse(delta("Ahoy"), error)))
    send(page, "Hello")
    expect(page.get_by_role("alert")).to_have_text("Error 500: The engine died.")
    expect(page.locator(".msg.assistant")).to_have_text("Ahoy")


def test_stream_cut_off_before_done_is_an_error(page: Page) -> None:
    open_chat(page, stream(sse(delta("Ahoy"), done=False)))
    send(page, "Hello")
    expect(page.get_by_role("alert")).to_contain_text("ended before the answer was complete")


@contextmanager
def serving(app: Starlette) -> Iterator[str]:
    """``app`` served by uvicorn in a thread on a port of the loopback interface; its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off",
                                           timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive(), "the fake server failed to start"
            assert time.monotonic() < deadline, "the fake server did not start within 30 s"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def endless_completions(left: threading.Event) -> Starlette:
    """The chat page and a fake ``/v1`` whose answer streams one delta, then stays open
    (keep-alive comments only) until the client leaves, which sets ``left``: as an engine still
    generating, however fast, the stream can only end early."""

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def completions(request: Request) -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            try:
                yield f"data: {json.dumps(delta('Ahoy'))}\n\n"
                while True:  # comments: the stream notices a closed connection as it writes
                    await asyncio.sleep(0.1)
                    yield ": generating\n\n"
            finally:
                left.set()

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[
        *chat_routes(), routing.Route("/v1/models", models),
        routing.Route("/v1/chat/completions", completions, methods=["POST"])])


def test_stop_aborts_the_stream_and_keeps_the_partial_answer(browser: Browser) -> None:
    left = threading.Event()
    with serving(endless_completions(left)) as url, chat_page(browser, url, MODEL,
                                                              timeout_ms=10_000) as page:
        send(page, "Tell a long story.")
        answer = page.locator(".msg.assistant")
        expect(answer).to_have_text("Ahoy")  # the stream is under way
        assert not left.is_set(), "the stream ended before Stop"
        page.get_by_role("button", name="Stop").click()
        expect(page.locator("#status")).to_have_text("Stopped.")
        expect(answer).to_have_text("Ahoy(stopped)")  # the partial answer stays, marked
        expect(page.get_by_role("alert")).to_be_hidden()  # a stop is not an error
        expect(page.get_by_role("button", name="Send")).to_be_enabled()
        expect(page.get_by_role("button", name="Stop")).to_be_disabled()
        # The server saw the request go: the page aborted it, not only its own display.
        assert left.wait(30), "the stream was still open 30 s after Stop"


def test_history_and_settings_go_into_each_request(page: Page) -> None:
    seen = open_chat(page, stream(sse(delta("Arr."))))
    page.get_by_label("System prompt").fill("Talk like a pirate.")
    page.get_by_label("Max tokens").fill("32")
    page.get_by_label("Temperature").fill("0.2")
    send(page, "Hi")
    expect(page.locator(".msg.assistant")).to_have_text("Arr.")
    send(page, "Again")
    expect(page.locator(".msg.assistant")).to_have_count(2)
    body = json_sent(seen[1].request)
    assert body["messages"] == [
        {"role": "system", "content": "Talk like a pirate."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Arr."},
        {"role": "user", "content": "Again"},
    ]
    assert (body["max_tokens"], body["temperature"]) == (32, 0.2)

    page.get_by_role("button", name="New chat").click()
    expect(page.locator(".msg")).to_have_count(0)
    send(page, "Fresh")
    expect(page.locator(".msg.assistant")).to_have_count(1)
    assert json_sent(seen[2].request)["messages"][1:] == [{"role": "user", "content": "Fresh"}]


def test_model_output_is_shown_as_text_not_markup(page: Page) -> None:
    open_chat(page, stream(sse(delta("<img src=x onerror=alert(1)><b>bold</b>"))))
    send(page, "Hello")
    expect(page.locator(".msg.assistant")).to_have_text("<img src=x onerror=alert(1)><b>bold</b>")
    expect(page.locator(".msg.assistant img")).to_have_count(0)


def thought(text: str, field: str = "reasoning") -> dict[str, object]:
    return {"object": "chat.completion.chunk", "model": MODEL,
            "choices": [{"index": 0, "delta": {field: text}, "finish_reason": None}]}


def test_reasoning_is_shown_collapsed_apart_from_the_answer(page: Page) -> None:
    """vLLM sends a reasoning model's thinking as ``reasoning`` deltas (``reasoning_content``
    before 0.13) when it runs a reasoning parser; only the answer goes back with the history."""
    seen = open_chat(page, stream(sse(thought("Two and "), thought("two.", "reasoning_content"),
                                      delta("It is "), delta("<b>4</b>."))))
    send(page, "What is 2+2?")
    message = page.locator(".msg.assistant")
    expect(message.locator(".answer")).to_have_text("It is <b>4</b>.")
    reasoning = message.locator("details.reasoning")
    expect(reasoning).not_to_have_attribute("open", "")
    expect(reasoning.locator("summary")).to_have_text("Reasoning")
    expect(reasoning.locator("div")).to_be_hidden()
    reasoning.locator("summary").click()
    expect(reasoning.locator("div")).to_have_text("Two and two.")
    expect(message.locator("b")).to_have_count(0)
    send(page, "Thanks")
    expect(page.locator(".msg.assistant")).to_have_count(2)
    assert json_sent(seen[1].request)["messages"][1] == {"role": "assistant",
                                                         "content": "It is <b>4</b>."}
