"""The chat page at /chat, driven in headless Chromium against the served instance: the answer
streams in, the conversation keeps its history, Stop aborts the request in the engine, and a
server error is shown rather than hanging. Screenshots are kept in tests/artifacts/.

What the tests assert is read from what the page and the server record (each text the page gave
an answer, vLLM's counters), never sampled at an interval or bounded by the speed of the
machine: the same tests hold on a loaded 2-core CPU and on a GPU that streams 30 times faster.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from itertools import pairwise

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, Request, ViewportSize, expect

from tests.browser import DESKTOP, PHONE, json_sent
from tests.browser import chat_page as browser_chat_page
from tests.conftest import MODEL
from tests.metrics import finished_requests, generated_tokens, seconds_until_generation_stops
from tests.served import ARTIFACTS, Served

pytestmark = pytest.mark.e2e
PIRATE = "Who are you? Please respond in pirate speak!"
LONG_STORY = "Tell me a long story about a pirate ship."
# What the context (2048) leaves after the prompt: streaming this long takes seconds even on a
# fast GPU, so the answer is still coming when Stop is clicked.
STOP_MAX_TOKENS = 1900
ANSWER_TIMEOUT_S = 300.0  # other engines may share the 2 cores
GENERATION_STOP_TIMEOUT_S = 60.0  # an answer that is not aborted runs on for much longer here
# Every text the page gives an answer, as it gives it (the page replaces the answer's text
# node once per streamed delta): the page's own record of the stream, which no sampling
# interval can miss however fast the tokens come.
RECORD_ANSWER_TEXTS = """() => {
  window.answerTexts = [];
  new MutationObserver((records) => {
    for (const record of records) {
      if (!record.target.classList || !record.target.classList.contains("answer")) continue;
      for (const node of record.addedNodes) {
        if (node.nodeType === Node.TEXT_NODE) window.answerTexts.push(node.data);
      }
    }
  }).observe(document.getElementById("messages"), { childList: true, subtree: true });
}"""


def chat_page(browser: Browser, server: Served, viewport: ViewportSize
              ) -> AbstractContextManager[Page]:
    """/chat of the served instance opened in a fresh browser context, once it has read the
    model name."""
    return browser_chat_page(browser, server.url, MODEL, viewport)


def ask(page: Page, text: str, max_tokens: int, temperature: float = 0) -> None:
    if not page.get_by_label("Max tokens").is_visible():
        page.get_by_text("Settings").click()  # folded away on a phone
    page.get_by_label("Max tokens").fill(str(max_tokens))
    page.get_by_label("Temperature").fill(str(temperature))
    page.get_by_label("Message").fill(text)
    page.get_by_label("Message").press("Enter")


def answers(page: Page) -> Locator:
    return page.locator(".msg.assistant")


def wait_idle(page: Page) -> None:
    """Wait until the page is idle again: its answer complete, failed or stopped."""
    expect(page.get_by_role("button", name="Send"),
           f"the page was still busy after {ANSWER_TIMEOUT_S:.0f} s").to_be_enabled(
        timeout=ANSWER_TIMEOUT_S * 1000)


def answer_texts(page: Page) -> list[str]:
    """Each text the page has given an answer since ``RECORD_ANSWER_TEXTS`` ran, in order."""
    texts = page.evaluate("() => window.answerTexts")
    assert isinstance(texts, list), "RECORD_ANSWER_TEXTS did not run on this page"
    return texts


@pytest.mark.parametrize("path", ["/chat", "/chat/"])
def test_chat_page_is_served_beside_bentomls_page(server: Served, path: str) -> None:
    # No redirect, so none built from the Host header (a mount at /chat would send
    # "location: http://evil.example/chat/").
    page = httpx.get(f"{server.url}{path}", headers={"Host": "evil.example"}, timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "location" not in page.headers and "evil.example" not in page.text
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert "BentoML" in httpx.get(f"{server.url}/", timeout=30).text


def test_chat_streams_the_answer_and_keeps_history(browser: Browser, server: Served) -> None:
    with chat_page(browser, server, DESKTOP) as page:
        sent: list[Request] = []
        page.on("request", lambda request: sent.append(request))
        page.get_by_label("System prompt").fill("You are a helpful assistant.")
        page.evaluate(RECORD_ANSWER_TEXTS)
        ask(page, PIRATE, max_tokens=96)
        wait_idle(page)
        expect(page.locator("#status")).to_contain_text(re.compile(r"\d+ tokens in"))
        first = answers(page).last.text_content() or ""
        assert len(first) > 20
        texts = answer_texts(page)
        assert len(set(texts)) >= 3 and texts[-1] == first, f"expected the text to grow: {texts}"
        assert all(later.startswith(text) for text, later in pairwise(texts)), (
            f"the answer only ever grows: {texts}")

        ask(page, "Say that again in five words.", max_tokens=16)
        wait_idle(page)
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
        tokens_before, finished_before = generated_tokens(server.url), finished_requests(server.url)
        ask(page, LONG_STORY, max_tokens=STOP_MAX_TOKENS)
        expect(answers(page).last).to_have_text(re.compile(r"\S[\s\S]{19}"),
                                                timeout=ANSWER_TIMEOUT_S * 1000)
        page.get_by_role("button", name="Stop").click()
        expect(page.locator("#status")).to_have_text("Stopped.")
        stopped = answers(page).last.text_content()
        assert stopped and stopped.endswith("(stopped)")

        # The engine let go of the request: it stopped generating (raises, saying so, if it
        # still generates after the timeout, as the whole answer would here), and the request
        # never finished, which the whole answer would have done on a fast GPU by now.
        waited = seconds_until_generation_stops(server.url, timeout=GENERATION_STOP_TIMEOUT_S)
        generated = generated_tokens(server.url) - tokens_before
        print(f"\nstopped after {len(stopped)} characters; the engine generated {generated:.0f} "
              f"tokens, the last {waited:.2f} s after the page showed Stopped.")
        assert finished_requests(server.url) == finished_before, (
            f"the stopped request ran to its end ({generated:.0f} tokens generated)")
        assert generated < STOP_MAX_TOKENS, f"{generated:.0f} tokens generated"
        assert answers(page).last.text_content() == stopped, "text kept coming after Stop"

        expect(page.get_by_role("button", name="Stop")).to_be_disabled()
        ask(page, "Say hi.", max_tokens=8)
        wait_idle(page)
        expect(answers(page)).to_have_count(2)
        expect(page.locator("#status")).to_contain_text("tokens in")


def test_server_error_is_shown_on_a_phone(browser: Browser, server: Served) -> None:
    with chat_page(browser, server, PHONE) as page:
        ask(page, "Say hi.", max_tokens=16)
        wait_idle(page)
        ask(page, PIRATE, max_tokens=100000)
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text("Error 400: ")
        expect(alert).to_contain_text("max_tokens=100000")
        # The failed turn is taken back for editing; the earlier exchange stays.
        expect(page.get_by_label("Message")).to_have_value(PIRATE)
        expect(page.locator(".msg")).to_have_count(2)
        expect(page.get_by_role("button", name="Send")).to_be_enabled()
        page.screenshot(path=ARTIFACTS / "chat-phone.png")
