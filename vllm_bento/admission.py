"""Admission: which requests the gate lets through, which it refuses, and the drain at shutdown.

One ``Admission`` per worker, built by ``vllm_bento.runtime.Runtime`` from the settings and
handed to the gate (``vllm_bento.gate.Gate``) and to the shutdown path (``lifecycle``).

The in-flight cap follows the engine: vLLM runs at most ``max_num_seqs`` requests at once and
queues the rest (raw ``vllm serve`` queues without bound). By default the service admits
``WAITING_ALLOWANCE`` times that many, so a full batch can wait behind the running one; past
that a request would wait for more than one whole batch to finish, and a quick 429 lets the
client (or BentoCloud's autoscaler, which adds replicas) send it where it is served sooner.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vllm_bento.front_ends import SharedSequences

logger = logging.getLogger(__name__)

SHUTDOWN = "The server is shutting down."
STARTING = "The model engine is starting."
ABORT_WAIT_S = 5.0  # how long an app ended early gets to abort its engine request
WAITING_ALLOWANCE = 2
"""Default cap = this many times the engine's ``max_num_seqs``: one batch running, one waiting.
Measured on an H200 (docs/benchmarks-gpu.md): at 1024 concurrent streams with vLLM's default
``max_num_seqs`` the service refused none, as raw ``vllm serve``."""


REQUEST_SHARE = 2
"""One request may ask for at most ``max_num_seqs // REQUEST_SHARE`` sequences: whatever one
client asks, the engine's running batch keeps room for others' requests beside it. (vLLM runs
the ``n`` choices of a request as ``n`` sequences of its batch; a request for ``max_num_seqs`` of
them would make every other request wait for it to finish.)"""


def default_max_request_sequences(max_num_seqs: int) -> int:
    """The most sequences (``n`` choices times prompts) one request may ask of an engine
    scheduling up to ``max_num_seqs`` at once."""
    return max(1, max_num_seqs // REQUEST_SHARE)


BODIES_IN_TRANSFER = 32
"""Bodies still arriving may hold at most this many times the largest body (128 MiB with the
default 4 MiB): a few hundred slow clients sending big bodies would otherwise hold that many
bodies in memory until their deadline (150 sockets sending 4 MiB each took 600 MiB)."""


def default_max_in_flight(max_num_seqs: int) -> int:
    """The cap used when ``LLM_MAX_IN_FLIGHT`` is unset, for an engine scheduling up to
    ``max_num_seqs`` requests at once."""
    return WAITING_ALLOWANCE * max_num_seqs


@dataclass(eq=False)
class Admitted:
    """A request in flight: its task, the sequences it asked for (``n`` choices, or one per
    prompt of a completions list), and the event that ends it early (at shutdown)."""

    task: asyncio.Task[None] | None
    sequences: int = 1
    cut: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Admission:
    """What the gate enforces, and the requests it let in.

    ``max_in_flight`` counts sequences, as the engine's ``max_num_seqs`` does: a request for
    ``n`` choices takes ``n`` slots, so one request cannot fill the engine while others wait.
    It is the server's: with several workers (``LLM_API_SERVER_COUNT``) each counts every
    worker's sequences through ``shared``.
    It is None until the engine is up, unless the operator set it: then it is
    ``default_max_in_flight`` of the engine's ``max_num_seqs`` (``Runtime.start``).
    ``max_n`` bounds ``n``, and ``max_request_sequences`` (None until the engine is up:
    ``default_max_request_sequences``) the sequences of one request; ``max_body_bytes`` and
    ``body_timeout_s`` bound a request's body, which is read whole before the request takes a
    slot.
    """

    api_keys: tuple[str, ...] = ()
    max_in_flight: int | None = None
    request_timeout_s: float | None = None
    max_n: int = 128
    max_request_sequences: int | None = None
    max_body_bytes: int = 4 * 2**20
    body_timeout_s: float = 30.0
    retry_after_s: int = 1
    bytes_in_transfer: int = 0  # of bodies still arriving (read by the gate)
    loopback_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    refusal: str | None = STARTING  # None while serving
    stopping: bool = False  # set once shutdown has begun: an engine exit is then expected
    admitted: set[Admitted] = field(default_factory=set)  # requests in flight
    shared: SharedSequences | None = None  # every worker's sequences, with several workers
    worker: int = 0  # this worker's API server index (vLLM's client index), for the request log

    @property
    def in_flight(self) -> int:
        """Requests in flight."""
        return len(self.admitted)

    @property
    def sequences_in_flight(self) -> int:
        return sum(request.sequences for request in self.admitted)

    @property
    def max_bytes_in_transfer(self) -> int:
        return BODIES_IN_TRANSFER * self.max_body_bytes

    def take_body_bytes(self, size: int) -> bool:
        """Count ``size`` more bytes of bodies still arriving, if they fit the budget."""
        if self.bytes_in_transfer + size > self.max_bytes_in_transfer:
            return False
        self.bytes_in_transfer += size
        return True

    def release_body_bytes(self, size: int) -> None:
        self.bytes_in_transfer -= size

    def has_room(self, sequences: int = 1) -> bool:
        """Whether a request of ``sequences`` fits under the cap; one bigger than the whole
        cap fits only when nothing else is in flight (it would never fit otherwise). With
        several workers, counts every worker's requests (``shared``)."""
        in_flight = self.sequences_in_flight if self.shared is None else self.shared.total()
        if self.max_in_flight is None or not in_flight:
            return True
        return in_flight + sequences <= self.max_in_flight

    def open(self) -> None:
        self.refusal = None

    def stop(self) -> None:
        self.stopping = True
        self.refusal = SHUTDOWN

    def refuse(self, reason: str) -> None:
        self.refusal = reason

    def key_ok(self, token: str) -> bool:
        """Constant-time comparison against every configured key."""
        given = token.encode()
        return any(hmac.compare_digest(given, key.encode()) for key in self.api_keys)

    def admit(self, task: asyncio.Task[None] | None, sequences: int = 1) -> Admitted | None:
        """Take ``sequences`` slots for a request, or None when they do not fit (``has_room``):
        with several workers another may have taken the last ones since it was asked."""
        if self.shared is not None:
            if not self.shared.take(self.sequences_in_flight, sequences, self.max_in_flight):
                return None
        elif not self.has_room(sequences):
            return None
        request = Admitted(task, sequences)
        self.admitted.add(request)
        return request

    def release(self, request: Admitted) -> None:
        """Free ``request``'s slot; a second call does nothing."""
        if request in self.admitted:
            self.admitted.discard(request)
            if self.shared is not None:
                self.shared.set_mine(self.sequences_in_flight)

    async def drain(self, grace_s: float) -> None:
        """Refuse new requests, wait up to ``grace_s`` for those in flight, then end the rest
        early (the gate aborts them in the engine and answers 503), cancelling only those
        whose app ignored that for ``ABORT_WAIT_S``."""
        self.stop()
        logger.info("Draining %d request(s) for up to %.0f s", self.in_flight, grace_s)
        await self.until_idle(grace_s)
        if not self.admitted:
            return
        logger.warning("Ending %d request(s) still running after the grace period",
                       self.in_flight)
        for request in list(self.admitted):
            request.cut.set()
        await self.until_idle(ABORT_WAIT_S + 1)
        for request in list(self.admitted):  # an app that ignored the disconnect
            if request.task is not None:
                request.task.cancel()

    async def until_idle(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.admitted and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
