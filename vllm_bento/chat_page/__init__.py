"""The chat page at ``/chat``: one static HTML file with plain JavaScript that
streams from this service's own ``/v1/chat/completions``.

It loads nothing from other hosts (no CDN, fonts or scripts), so it works offline; the
Content-Security-Policy header makes the browser refuse anything else, should an edit add it.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

PAGE = Path(__file__).with_name("index.html")

# The page's own inline script and style, and fetches to this origin only.
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'")


def chat_routes() -> list[Route]:
    """``GET /chat`` and ``GET /chat/``, both answered with the page, to be routed at the
    server's root: a mount at ``/chat`` would answer ``/chat`` with a redirect to an absolute
    URL built from the request's ``Host`` header. The page reads the file once, here, so a
    missing file fails at import of the service rather than on a user's first visit (raises
    OSError)."""
    html = PAGE.read_text(encoding="utf-8")
    headers = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache",
               "X-Content-Type-Options": "nosniff"}

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(html, headers=headers)

    return [Route(path, page, methods=["GET"]) for path in ("/chat", "/chat/")]
