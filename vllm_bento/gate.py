"""The gate in front of every route but the open ones (``OPEN_PATHS``: probes, metrics, docs and
chat pages), so the model routes (``/v1/*``, ``/generate``, ``/tokenize``, ``/detokenize``) and
any route added later: API keys, the cap on requests in flight, refusal while the engine is down
or the server is draining, the per-request time limit, and one log line per request.
What it enforces is an ``vllm_bento.admission.Admission``, handed to it when it is added.

Answers it gives, each in the OpenAI error shape (Anthropic's on ``/v1/messages``):

- 401 ``authentication_error``: keys are configured and the bearer token is missing or wrong;
- 404 ``invalid_request_error``: the path ends in "/" (no model route does; Starlette would
  redirect it to a URL built from the Host header);
- 503 ``service_unavailable``: the engine is not serving (starting, dead) or the server is
  draining for shutdown; with ``Retry-After``;
- 413 ``invalid_request_error``: the body is over ``max_body_bytes`` (by its Content-Length,
  before it is read, or as it arrives);
- 408 ``invalid_request_error``: the whole body did not arrive within ``body_timeout_s``;
- 503 ``service_unavailable`` with ``Retry-After``: the bodies still arriving would hold more
  than ``max_bytes_in_transfer`` bytes (many slow clients sending big bodies at once);
- 400 ``invalid_request_error`` (param ``n``): ``n`` is over ``max_n``, or the request's
  sequences (``n`` times its prompts) over ``max_request_sequences``;
- 429 ``rate_limit_exceeded``: the request's sequences do not fit under ``max_in_flight`` (a
  slot is free again as a response's last byte is sent); ``Retry-After``;
- 504 ``timeout``: the request outran ``request_timeout_s`` before its response started;
- 503 ``service_unavailable`` also when a request is still running at the end of the shutdown
  grace period (``Admission.drain``).

A request takes its slots only once its whole body is in: a client that sends headers and then
little or nothing holds no slot, so idle sockets cannot lock others out.

A request ended early (time limit, shutdown) is aborted in the engine. If its stream has already
started, an SSE stream gets a last ``data: {"error": ...}`` frame and ``data: [DONE]`` (on
``/v1/messages``, Anthropic's ``event: error`` frame); a plain-text stream (``/generate``) is cut
off without its final chunk.

``/generate`` calls ``/v1`` on the same server; those inner calls carry a per-process secret
header, so they pass the key check and do not take a second slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import NamedTuple

from pydantic import TypeAdapter, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vllm_bento.admission import ABORT_WAIT_S, SHUTDOWN, Admission
from vllm_bento.errors import StreamCutOff, error_response, stream_error_frames

logger = logging.getLogger("vllm_bento.access")

LOOPBACK_HEADER = "x-vllm-bento-loopback"
_USAGE = re.compile(rb'"prompt_tokens":\s*(\d+).*?"completion_tokens":\s*(\d+)', re.S)
REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# The routes whose bodies may ask for more than one sequence: parsed here to count them.
SEQUENCE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
_TAIL_BYTES = 4096  # usage sits at the end of a response (last SSE chunk or JSON body)

OPEN_PATHS = frozenset({"/", "/docs.json", "/schema.json", "/livez", "/healthz", "/readyz",
                        "/metrics", "/chat"})
"""Routes that bypass the gate: probes, metrics, BentoML's docs page and the chat page (which
calls the gated ``/v1`` from the browser). Every other route, one added later included, is
gated."""
OPEN_PREFIXES = ("/chat/", "/static_content/", "/assets/")  # the pages' own files


def is_gated(path: str) -> bool:
    return path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES)


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def client_request_id(scope: Scope) -> str | None:
    """The client's ``X-Request-Id`` if it is short and made of safe characters; anything else
    could forge fields of the request log line or come back re-encoded, so it gets a new one."""
    given = header(scope, b"x-request-id")
    return given if given is not None and REQUEST_ID.fullmatch(given) else None


def with_header(headers: list[tuple[bytes, bytes]], name: bytes,
                value: str) -> list[tuple[bytes, bytes]]:
    """``headers`` (ASGI: lowercase names) with ``name: value`` in place of any ``name``."""
    return [*((k, v) for k, v in headers if k != name), (name, value.encode())]


def with_request_id(scope: Scope, request_id: str) -> Scope:
    """``scope`` with ``X-Request-Id: request_id`` in place of any the client sent: vLLM takes
    its request id from that header (``chatcmpl-<id>``), so one id finds a request in the
    service's log, vLLM's log and a trace, and ``/generate`` hands it to its inner call."""
    return {**scope, "headers": with_header(scope.get("headers", []), b"x-request-id",
                                            request_id)}


def bearer(scope: Scope) -> str:
    auth = header(scope, b"authorization") or ""
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def token_counts(tail: bytes) -> tuple[str, str]:
    """Prompt and completion tokens from the last usage object in a response tail, or '-'."""
    found = list(_USAGE.finditer(tail))
    if not found:
        return "-", "-"
    prompt, completion = found[-1].groups()
    return prompt.decode(), completion.decode()


class Refusal(NamedTuple):
    """An answer the gate gives instead of the app's."""

    status: int
    message: str
    type: str  # OpenAI's error type
    headers: dict[str, str] = {}  # noqa: RUF012 (never mutated)
    param: str | None = None  # the body field at fault


class BodyTooLarge(Exception):
    pass


class BodiesOverBudget(Exception):
    """A chunk would take the bodies in transfer past ``Admission.max_bytes_in_transfer``."""


async def read_body(receive: Receive, limit: int | None = None) -> bytes | None:
    """The whole request body, or None if the client left before sending it all.

    Raises:
        BodyTooLarge: more than ``limit`` bytes arrived.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A receive channel that gives ``body`` first and then carries on with ``receive`` (so
    disconnects are still seen)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def requested_choices(path: str, body: bytes) -> tuple[int, int]:
    """``(n, prompts)`` a request body asks for: ``n`` choices of each of ``prompts`` prompts
    (more than one only for a list of prompts on ``/v1/completions``). ``n`` is read as vLLM's
    request models read it (pydantic's lax ``int``: ``"100"`` and ``100.0`` are 100), from the
    parsed body (so ``"\\u006e"`` is ``n``). A body vLLM will refuse anyway (not JSON, ``n`` not a
    positive integer) counts as ``(1, 1)``."""
    if path not in SEQUENCE_PATHS:
        return 1, 1
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return 1, 1
    if not isinstance(data, dict):
        return 1, 1
    n = lax_int(data.get("n", 1))
    prompt = data.get("prompt")
    prompts = 1
    if (path == "/v1/completions" and isinstance(prompt, list) and prompt
            and isinstance(prompt[0], (str, list))):
        prompts = len(prompt)  # a list of texts or of token lists; a flat int list is one
    return (n if n is not None and n >= 1 else 1), prompts


_INT: TypeAdapter[int] = TypeAdapter(int)


def lax_int(value: object) -> int | None:
    """``value`` as pydantic reads an ``int`` field in lax mode, or None if it cannot."""
    try:
        return _INT.validate_python(value)
    except ValidationError:
        return None


def content_length(scope: Scope) -> int | None:
    value = header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


class Gate:
    """ASGI middleware enforcing ``admission`` on every route but the open ones (``is_gated``),
    which pass untouched.

    ``direct`` maps path prefixes to the app that serves them (``{"/v1/": <the /v1 forwarder>}``):
    an admitted request under one goes straight there instead of down the rest of BentoML's
    stack (its context and exception middlewares, router and mount), which a model route does
    not use and which would wrap every streamed chunk once more.
    """

    def __init__(self, app: ASGIApp, admission: Admission,
                 direct: Mapping[str, ASGIApp] | None = None) -> None:
        self.app = app
        self.state = admission
        self.direct = tuple((direct or {}).items())

    def inner_app(self, path: str) -> ASGIApp:
        """The app an admitted request for ``path`` is handed to."""
        for prefix, app in self.direct:
            # The bare prefix too ("/v1"): down the stack, Starlette's router would answer it
            # with a redirect to a URL built from the Host header.
            if path.startswith(prefix) or path == prefix.rstrip("/"):
                return app
        return self.app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_gated(scope["path"]):
            await self.app(scope, receive, send)
            return
        request_id = client_request_id(scope)
        if request_id is None:
            # Named for the worker that admitted it when there are several.
            request_id = (uuid.uuid4().hex if self.state.shared is None
                          else f"{self.state.worker}-{uuid.uuid4().hex}")
            scope = with_request_id(scope, request_id)
        exchange = Exchange(scope, send, request_id, self.state.worker)
        loopback = self._is_loopback(scope)
        sequences = 1
        refused = self._refusal(scope, loopback) or self._no_such_route(scope)
        if refused is None and not loopback:
            # The outer /generate request read its body and holds the slots of its loopback.
            body, refused = await self._body(scope, receive)
            if body is None and refused is None:  # the client left while sending
                exchange.log(loopback)
                return
            if body is not None:
                receive = replaying(body, receive)
                n, prompts = requested_choices(scope["path"], body)
                sequences = n * prompts
                refused = (self._too_many_sequences(n, sequences)
                           or self._refusal(scope, loopback, sequences))
        if refused is not None:
            await exchange.refuse(refused, receive)
        else:
            await self._admit(exchange, receive, loopback, sequences)
        exchange.log(loopback)

    async def _body(self, scope: Scope, receive: Receive) -> tuple[bytes | None, Refusal | None]:
        """The request's whole body, read under the size limit and the deadline; or why not."""
        state = self.state
        limit = state.max_body_bytes
        too_large = Refusal(413, f"The request body is over the limit of {limit} bytes.",
                            "invalid_request_error")
        if (length := content_length(scope)) is not None and length > limit:
            return None, too_large
        taken = 0

        async def counted() -> Message:
            """``receive``, with each chunk counted against the bytes of bodies in transfer."""
            nonlocal taken
            message = await receive()
            size = len(message.get("body", b""))
            if not state.take_body_bytes(size):
                raise BodiesOverBudget
            taken += size
            return message

        try:
            body = await asyncio.wait_for(read_body(counted, limit), state.body_timeout_s)
        except BodyTooLarge:
            return None, too_large
        except BodiesOverBudget:
            return None, Refusal(503, "Too many request bodies are arriving at once; retry "
                                 "later.", "service_unavailable",
                                 {"retry-after": str(state.retry_after_s)})
        except TimeoutError:
            return None, Refusal(408, "The request body did not arrive within "
                                 f"{state.body_timeout_s:g} s.", "invalid_request_error")
        finally:
            state.release_body_bytes(taken)
        return body, None

    @staticmethod
    def _no_such_route(scope: Scope) -> Refusal | None:
        """404 for a path ending in "/": no model route has one, and Starlette's routers
        (BentoML's, vLLM's) would answer it with a redirect to a URL built from the Host
        header."""
        path = scope["path"]
        if not path.endswith("/"):
            return None
        return Refusal(404, f"Invalid URL ({scope.get('method')} {path})",
                       "invalid_request_error")

    def _too_many_sequences(self, n: int, sequences: int) -> Refusal | None:
        """400 for ``n`` over ``max_n``, or a request (``n`` times its prompts) over the
        sequences one request may run at once."""
        if n > self.state.max_n:
            return Refusal(400, f"n is {n}; this server returns at most {self.state.max_n} "
                           "choices per request.", "invalid_request_error", param="n")
        bound = self.state.max_request_sequences
        if bound is not None and sequences > bound:
            return Refusal(400, f"This request asks for {sequences} sequences (n times the "
                           f"prompts); one request may run at most {bound} at once (half of the "
                           "engine's max_num_seqs), so that others are served beside it.",
                           "invalid_request_error", param="n")
        return None

    def _is_loopback(self, scope: Scope) -> bool:
        token = header(scope, LOOPBACK_HEADER.encode())
        return token is not None and hmac.compare_digest(
            token.encode(), self.state.loopback_token.encode())

    def _refusal(self, scope: Scope, loopback: bool, sequences: int = 1) -> Refusal | None:
        state = self.state
        retry = {"retry-after": str(state.retry_after_s)}
        if state.api_keys and not loopback and not state.key_ok(bearer(scope)):
            return Refusal(401, "Invalid or missing API key: send 'Authorization: Bearer <key>'.",
                           "authentication_error", {"www-authenticate": "Bearer"})
        if state.refusal is not None:
            return Refusal(503, state.refusal, "service_unavailable", retry)
        if not loopback and not state.has_room(sequences):
            return self._full()
        return None

    def _full(self) -> Refusal:
        return Refusal(429, f"Too many requests in flight (limit {self.state.max_in_flight} "
                       "sequences); retry later.", "rate_limit_exceeded",
                       {"retry-after": str(self.state.retry_after_s)})

    async def _admit(self, exchange: Exchange, receive: Receive, loopback: bool,
                     sequences: int) -> None:
        app = self.inner_app(exchange.scope["path"])
        if loopback:  # the outer /generate request holds the slot and the time limit
            await app(exchange.scope, receive, exchange.send)
            return
        request = self.state.admit(asyncio.current_task(), sequences)
        if request is None:  # another worker took the last slots since _refusal looked
            await exchange.refuse(self._full(), receive)
            return
        # Free the slot as the last byte goes out, not after: a client that sends its next
        # request the moment it has the answer must find the slot free.
        exchange.on_last_byte = lambda: self.state.release(request)
        try:
            await self._run_until_done_or_cut(app, exchange, receive, request.cut)
        finally:
            self.state.release(request)

    async def _run_until_done_or_cut(self, app: ASGIApp, exchange: Exchange, receive: Receive,
                                     cut: asyncio.Event) -> None:
        """Run the app until it is done, its time limit passes or ``cut`` is set. Ended early,
        it is told that the client has gone (the one path on which vLLM and BentoML reliably
        abort the engine request), and the response is ended here."""
        channel = Disconnectable(receive)
        running = asyncio.ensure_future(app(exchange.scope, channel, exchange.send))
        cut_short = asyncio.ensure_future(cut.wait())
        try:
            await asyncio.wait({running, cut_short}, timeout=self.state.request_timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            running.cancel()
            raise
        finally:
            cut_short.cancel()
        if running.done():
            running.result()  # the app's own exception, if it raised one
            return
        exchange.muted = True
        channel.disconnect()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(running, ABORT_WAIT_S)
        if cut.is_set():
            retry = {"retry-after": str(self.state.retry_after_s)}
            await exchange.ended_early(503, SHUTDOWN, "service_unavailable", retry, receive)
        else:
            message = ("The request did not finish within the time limit of "
                       f"{self.state.request_timeout_s} s.")
            await exchange.ended_early(504, message, "timeout", {}, receive)


class Disconnectable:
    """The request's receive channel, which can also report that the client disconnected."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._gone = asyncio.Event()

    def disconnect(self) -> None:
        self._gone.set()

    async def __call__(self) -> Message:
        if self._gone.is_set():
            return {"type": "http.disconnect"}
        received = asyncio.ensure_future(self._receive())
        gone = asyncio.ensure_future(self._gone.wait())
        try:
            await asyncio.wait({received, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also when the app cancels this call (at the end of a stream): a task left
            # pending would be destroyed later with an error in the log.
            for waiter in (received, gone):
                if not waiter.done():
                    waiter.cancel()
        if received.done() and not received.cancelled():
            return received.result()
        return {"type": "http.disconnect"}


class Exchange:
    """One request's response as it passes through the gate: what was sent, for the log line
    and for ending a timed-out response the right way."""

    def __init__(self, scope: Scope, send: Send, request_id: str, worker: int = 0) -> None:
        self.scope = scope
        self._send = send
        self.request_id = request_id
        self.worker = worker  # the API server index that admitted it (for the log line)
        self.started_at = time.monotonic()
        self.status: int | None = None
        self.muted = False  # set on timeout: the app's own late messages are dropped
        self.sse = False  # an OpenAI stream (BentoML labels /generate's plain text SSE too)
        self.finished = False
        self.on_last_byte: Callable[[], None] | None = None
        # The last two body messages, joined only for the log line: a stream's usage is in its
        # last frames, and keeping more would copy bytes on every chunk.
        self._tail = (b"", b"")

    async def send(self, message: Message) -> None:
        """The send channel handed to the app: one call per streamed chunk."""
        if not self.muted:
            await self._send(self.noted(message))

    async def emit(self, message: Message) -> None:
        """Send ``message`` even when the app's own messages are muted (the gate's answers)."""
        await self._send(self.noted(message))

    def noted(self, message: Message) -> Message:
        """``message`` recorded for the log line and the slot, with the request id added to
        the response's headers."""
        if message["type"] == "http.response.start":
            self.status = message["status"]
            headers = list(message.get("headers", []))
            headers.append((b"x-request-id", self.request_id.encode()))
            message = {**message, "headers": headers}
            content_type = dict(headers).get(b"content-type", b"")
            self.sse = self.scope["path"].startswith("/v1/") and content_type.startswith(
                b"text/event-stream")
        elif message["type"] == "http.response.body":
            body = message.get("body", b"")
            if body:
                self._tail = (self._tail[1], body)
            if not message.get("more_body", False):
                self.finished = True
                if self.on_last_byte is not None:
                    self.on_last_byte()
        return message

    @property
    def tail(self) -> bytes:
        return b"".join(self._tail)[-_TAIL_BYTES:]

    async def refuse(self, refusal: Refusal, receive: Receive) -> None:
        response = error_response(self.scope["path"], refusal.status, refusal.message,
                                  refusal.type, refusal.param)
        response.headers.update(refusal.headers)
        await response(self.scope, receive, self.emit)

    async def send_error(self, status: int, message: str, err_type: str,
                         headers: dict[str, str], receive: Receive) -> None:
        await self.refuse(Refusal(status, message, err_type, headers), receive)

    async def ended_early(self, status: int, message: str, err_type: str,
                          headers: dict[str, str], receive: Receive) -> None:
        """End the response of a request the gate stopped: an error answer if none started,
        an error frame on an OpenAI or Anthropic stream, a cut-off otherwise."""
        if self.status is None:
            await self.send_error(status, message, err_type, headers, receive)
        elif self.finished:
            return
        elif self.sse:
            frames = stream_error_frames(self.scope["path"], status, message, err_type)
            await self.emit({"type": "http.response.body", "body": frames, "more_body": False})
            self.status = status  # for the log line: the stream began with 200
        else:
            self.status = status
            self.log(loopback=False)
            raise StreamCutOff(message)

    def log(self, loopback: bool) -> None:
        prompt, completion = token_counts(self.tail)
        logger.info(
            "request_id=%s method=%s path=%s status=%s prompt_tokens=%s completion_tokens=%s "
            "latency_ms=%.0f loopback=%s worker=%d",
            self.request_id, self.scope.get("method"), self.scope["path"], self.status,
            prompt, completion, (time.monotonic() - self.started_at) * 1000, int(loopback),
            self.worker,
        )

