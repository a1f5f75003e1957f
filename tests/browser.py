"""Headless Chromium for the chat page tests: Debian's `chromium` package driven by Playwright's
Python package (never `playwright install`, which downloads a browser: there is no network here).
`make browser` installs the package."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, Request, ViewportSize, expect, sync_playwright

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
# Headless on a container without a GPU or a user namespace, and no calls home.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DESKTOP: ViewportSize = {"width": 1100, "height": 780}
PHONE: ViewportSize = {"width": 390, "height": 844}


@contextmanager
def chromium() -> Iterator[Browser]:
    """A launched browser, closed on exit; raises FileNotFoundError without Chromium."""
    if not CHROMIUM.exists():
        raise FileNotFoundError(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def json_sent(request: Request) -> dict[str, Any]:
    """The JSON body the page sent with `request`; raises AssertionError if it sent none."""
    body = request.post_data_json
    assert isinstance(body, dict), f"no JSON body in {request.method} {request.url}"
    return body


@contextmanager
def chat_page(browser: Browser, url: str, model: str, viewport: ViewportSize = DESKTOP,
              timeout_ms: float = 60_000) -> Iterator[Page]:
    """The chat page of the server at ``url``, opened in a fresh browser context once it has
    read the model name ``model``; the context is closed on exit."""
    context = browser.new_context(viewport=viewport)
    try:
        page = context.new_page()
        page.set_default_timeout(timeout_ms)
        page.goto(f"{url}/chat")
        expect(page.locator("#model")).to_have_text(f"Model: {model}")
        yield page
    finally:
        context.close()
