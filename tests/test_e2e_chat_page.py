"""The chat page at /chat, driven in headless Chromium against the served instance: the answer
streams in, the conversation keeps its history, Stop aborts the request in the engine, and a
server error is shown rather than hanging. Screenshots are kept in tests/artifacts/."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, Request, ViewportSize, expect

from tests.browser import DESKTOP, PHONE, json_sent
from tests.conftest import MODEL
from tests.metrics import seconds_until_generation_stops
from tests.served import ARTIFACTS, Served

pytestmark = pytest.mark.e2e
PIRATE = "Who are you? Please respond in pirate speak!"
# Greedy SmolLM2 answers this with all 1500 tokens (~100 s here): it only ends early if aborted.
LONG_STORY = "Tell me a long story about a pirate ship."
ANSWER_TIMEOUT_S = 300.0  # other engines may share the 2 cores


@contextmanager
def chat_page(browser: Browser, server: Served, viewport: ViewportSize) -> Iterator[Page]:
    """/chat opened in a fresh browser context, once it has read the model name."""
    context = browser.new_context(viewport=viewport)
    try:
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{server.url}/chat")
        expect(page.locator("#model")).to_have_text(f"Model: {MODEL}")
        yield page
    finally:
        context.close()


def ask(page: Page, text: str, max_tokens: int, temperature: float = 0) -> None:
    if not page.get_by_label("Max tokens").is_visible():
        page.get_by_text("Settings").click()  # folded away on a phone
    page.get_by_label("Max tokens").fill(str(max_tokens))
    page.get_by_label("Temperature").fill(str(temperature))
    page.get_by_label("Message").fill(text)
    page.get_by_label("Message").press("Enter")


def answers(page: Page) -> Locator:
    return page.locator(".msg.assistant")


def busy(page: Page) -> bool:
    return page.get_by_role("button", name="Send").is_disabled()


def watch_answer(page: Page) -> list[int]:
    """Lengths of the last answer, sampled every 50 ms until the page is idle again."""
    lengths: list[int] = []
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while busy(page):
        assert time.monotonic() < deadline, "the answer never finished"
        lengths.append(len(answers(page).last.text_content() or ""))
        page.wait_for_timeout(50)
    return lengths


def test_chat_page_is_served_beside_bentomls_page(server: Served) -> None:
    page = httpx.get(f"{server.url}/chat/", timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert "BentoML" in httpx.get(f"{server.url}/", timeout=30).text


def test_chat_streams_the_answer_and_keeps_history(browser: Browser, server: Served) -> None:
    with chat_page(browser, server, DESKTOP) as page:
        sent: list[Request] = []
        page.on("request", lambda request: sent.append(request))
        page.get_by_label("System prompt").fill("You are a helpful assistant.")
        ask(page, PIRATE, max_tokens=96)
        lengths = watch_answer(page)
        assert len({n for n in lengths if n}) >= 3, f"expected the text to grow: {lengths}"
        assert lengths == sorted(lengths), "the answer only ever grows"
        expect(page.locator("#status")).to_contain_text(re.compile(r"\d+ tokens in"))
        first = answers(page).last.text_content() or ""
        assert len(first) > 20

        ask(page, "Say that again in five words.", max_tokens=16)
        watch_answer(page)
        expect(answers(page)).to_have_count(2)
        assert answers(page).last.text_content()
        (last,) = [r for r in sent if r.url.endswith("/v1/chat/completions")][-1:]
        body = json_sent(last)
        assert body["messages"] == [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": PIRATE},
            {"role": "assistant", "content": first},
            {"role": "user", "content": "Say that again in five words."},
        ]
        assert body["model"] == MODEL and body["stream"] is True
        assert (body["max_tokens"], body["temperature"]) == (16, 0)
        assert all(r.url.startswith(server.url) for r in sent), "the page works offline"
        page.screenshot(path=ARTIFACTS / "chat.png")


def test_stop_cancels_the_request_in_the_engine(browser: Browser, server: Served) -> None:
    with chat_page(browser, server, DESKTOP) as page:
        ask(page, LONG_STORY, max_tokens=1500)
        expect(answers(page).last).to_have_text(re.compile(r"\S[\s\S]{19}"),
                                                timeout=ANSWER_TIMEOUT_S * 1000)
        page.get_by_role("button", name="Stop").click()
        expect(page.locator("#status")).to_have_text("Stopped.")
        stopped = answers(page).last.text_content()
        assert stopped and stopped.endswith("(stopped)")
        page.wait_for_timeout(3000)
        assert answers(page).last.text_content() == stopped, "text kept coming after Stop"

        # The engine let go of the request, which would otherwise run for its 1500 tokens.
        assert seconds_until_generation_stops(server.url) < 1.5

        expect(page.get_by_role("button", name="Stop")).to_be_disabled()
        ask(page, "Say hi.", max_tokens=8)
        watch_answer(page)
        expect(answers(page)).to_have_count(2)
        expect(page.locator("#status")).to_contain_text("tokens in")


def test_server_error_is_shown_on_a_phone(browser: Browser, server: Served) -> None:
    with chat_page(browser, server, PHONE) as page:
        ask(page, "Say hi.", max_tokens=16)
        watch_answer(page)
        ask(page, PIRATE, max_tokens=100000)
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text("Error 400: ")
        expect(alert).to_contain_text("max_tokens=100000")
        # The failed turn is taken back for editing; the earlier exchange stays.
        expect(page.get_by_label("Message")).to_have_value(PIRATE)
        expect(page.locator(".msg")).to_have_count(2)
        expect(page.get_by_role("button", name="Send")).to_be_enabled()
        page.screenshot(path=ARTIFACTS / "chat-phone.png")
