"""The serving state of one service worker, in one object built from the settings.

``Runtime`` owns admission and drain (``Admission``), the engine and the app requests are
forwarded to (``target``) with the ``/v1`` forwarder in front of it (``openai_api``), the
engine's processes, and ``/generate``'s loopback client.
``service.py`` builds one at import and hands it explicitly to the gate middleware, the mounts
and the service class; nothing else holds serving state.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from vllm_bento import hardware, lifecycle
from vllm_bento.admission import (
    Admission,
    default_max_in_flight,
    default_max_request_sequences,
)
from vllm_bento.front_ends import RunFolder, SharedSequences
from vllm_bento.gate import OPEN_PATHS, OPEN_PREFIXES, Gate
from vllm_bento.loopback import LoopbackChat
from vllm_bento.openai_mount import UNROUTED, OpenAIMount, RouteLabels
from vllm_bento.root_mount import ROOT_PATHS
from vllm_bento.settings import Settings, api_server_count, engine_config
from vllm_bento.vllm_entrypoints import OpenAIServer, max_num_seqs, serve_openai

if TYPE_CHECKING:
    from fastapi import FastAPI

    from vllm_bento.control_tokens import ControlTokens

logger = logging.getLogger(__name__)

SIBLING_EXIT_MARGIN_S = 15.0  # past the grace: a worker's abort wait, hooks and exit

SERVICE_PATHS = OPEN_PATHS | frozenset(ROOT_PATHS) | {"/generate"}
"""The service's own routes outside vLLM's app (``/generate`` is ``VLLM.generate``)."""


class Runtime:
    """Everything a worker serves with; the engine itself exists between ``start`` and
    ``stop``. ``worker_id`` is BentoML's (1-based) for this worker: with several
    (``LLM_API_SERVER_COUNT``), worker 1 launches the engine and every one is a vLLM front end
    over it (``vllm_bento.front_ends``)."""

    def __init__(self, settings: Settings, worker_id: int | None = None) -> None:
        self.settings = settings
        self.admission = Admission(
            api_keys=settings.api_key_list,
            max_in_flight=settings.max_in_flight,
            request_timeout_s=settings.request_timeout_s,
            max_n=settings.max_n,
            max_body_bytes=int(settings.max_body_mib * 2**20),
            body_timeout_s=settings.body_timeout_s,
        )
        self.processes = lifecycle.EngineProcesses()
        # Several workers over one engine: this one's index (BentoML's worker ids start at 1).
        self.front_end_index = (worker_id or 1) - 1
        self.api_server_count = api_server_count(settings, hardware.detect())
        self.run: RunFolder | None = None  # shared with the other workers, from start on
        self.admission.worker = self.front_end_index
        self.openai_api = OpenAIMount(self)  # the /v1 forwarder, mounted by service.py
        # /generate's own requests to /v1 go in-process to a gate in front of the forwarder
        # (it logs them and knows them by the loopback token), not down BentoML's stack a
        # second time: BentoML's request metrics count each /generate once, and no socket is
        # crossed (vllm_bento.in_process).
        self.loopback = LoopbackChat(settings.served_name, settings.generate_temperature,
                                     self.admission.loopback_token,
                                     app=Gate(self.openai_api, admission=self.admission))
        self.server: OpenAIServer | None = None
        self._stack = AsyncExitStack()
        self._watchdogs: list[asyncio.Task[None]] = []
        self._starting = False  # between the start hook's beginning and its end
        self._arbiter_watch: threading.Thread | None = None
        self._routes: RouteLabels | None = None  # vLLM's app's routes, once it exists

    def metric_endpoint(self, path: str) -> str:
        """The ``endpoint`` label of a request for ``path`` in BentoML's request metrics: the
        path of a route the service serves, the template of one with parameters
        (``/v1/models/{model:path}``), else ``unrouted``, so that requests to made-up paths
        cannot add series without bound."""
        if path in SERVICE_PATHS:
            return path
        if path.startswith(OPEN_PREFIXES):
            return next(prefix for prefix in OPEN_PREFIXES if path.startswith(prefix))
        return UNROUTED if self._routes is None else self._routes.label(path)

    @property
    def target(self) -> FastAPI | None:
        """vLLM's OpenAI app while the engine runs, else None."""
        return None if self.server is None else self.server.app

    @property
    def control_tokens(self) -> ControlTokens | None:
        """The running model's control tokens, kept out of chat messages; None without an
        engine."""
        return None if self.server is None else self.server.control_tokens

    async def start(self, model_path: str) -> None:
        """Start the engine on ``model_path``, size admission from it, and open the gate.

        An engine that cannot start ends the whole server (exit code
        ``lifecycle.EXIT_CODE_ENGINE_START_FAILED``). A SIGTERM during the start abandons it
        and ends the worker (``lifecycle.abandon_start``); one that came before it, this returns
        with no engine and the shutdown already under way stops the rest.
        """
        if self._arbiter_watch is None:
            self._arbiter_watch = lifecycle.watch_arbiter(self.processes)
        keys = len(self.admission.api_keys)
        logger.info("API keys: %s", f"{keys} configured; every model route asks for one" if keys
                    else "none (LLM_API_KEYS is unset): every model route is open")
        if self.api_server_count > 1:
            self.run = RunFolder.for_arbiter(lifecycle.PARENT_AT_IMPORT, self.api_server_count)
            self.admission.shared = SharedSequences(self.run.path / "sequences",
                                                    self.run.count, self.front_end_index)
            if (pid := self.run.died_before(self.front_end_index)) is not None:
                # Restarted by circus after a death: the others serve through an engine this
                # one has no place in any more.
                lifecycle.exit_front_end_died([(self.front_end_index, pid)], self.processes)
            self.run.serving(self.front_end_index)
        self._starting = True
        try:
            if not lifecycle.install_drain_on_sigterm(self.admission,
                                                      self.settings.shutdown_grace_s,
                                                      starting=lambda: self._starting,
                                                      told=self._told_to_stop):
                logger.info("Stopped before the vLLM engine started")
                return
            await self._start_engine(model_path)
        finally:
            self._starting = False

    def _told_to_stop(self) -> None:
        if self.run is not None:
            self.run.stopping(self.front_end_index)

    async def _start_engine(self, model_path: str) -> None:
        cfg = engine_config(self.settings, hardware.detect())
        place = None if self.run is None else self.run.place(self.front_end_index)
        if place is None:
            logger.info("Starting vLLM for %s from %s: %s", cfg.served_model_name, model_path,
                        cfg)
        elif place.launches_engine:
            logger.info("API server %d of %d: starting vLLM's engine core for all of them, "
                        "for %s from %s: %s", place.index, place.count, cfg.served_model_name,
                        model_path, cfg)
        else:
            logger.info("API server %d of %d: connecting to the engine core API server 0 "
                        "starts", place.index, place.count)
        try:
            self.server = await self._stack.enter_async_context(serve_openai(
                cfg, model_path, place,
                on_engine_spawned=self.run.write_engine_pids if self.run else lambda pids: None))
        except Exception:
            # BentoML's arbiter would start the worker again, and the engine would fail the
            # same way, a full start each round, forever: end the whole server instead, with
            # the root error as the last lines of its log.
            logger.exception("The vLLM engine could not start; exiting (a restart would fail "
                             "the same way)")
            lifecycle.exit_server(self.processes, lifecycle.EXIT_CODE_ENGINE_START_FAILED)
        seqs = max_num_seqs(self.server.engine)
        if self.admission.max_in_flight is None:
            self.admission.max_in_flight = default_max_in_flight(seqs)
        self.admission.max_request_sequences = default_max_request_sequences(seqs)
        logger.info("Admitting up to %d sequences in flight, at most %d of them for one request "
                    "(engine max_num_seqs %d)", self.admission.max_in_flight,
                    self.admission.max_request_sequences, seqs)
        self._routes = RouteLabels(self.server.app)
        self.processes.note()
        if self.run is None:
            watchdogs = [lifecycle.watch_engine(self.server.engine, self.admission,
                                                self.processes)]
        else:
            # The engine is up, so API server 0 has written its PIDs: every worker watches them
            # and kills them if it ends the server.
            self.processes.share(self.run.engine_pids())
            watchdogs = [
                lifecycle.watch_engine(self.server.engine, self.admission, self.processes,
                                       alive=self.processes.shared_running),
                lifecycle.watch_front_ends(self.run.dead_workers, self.admission,
                                           self.processes)]
        self._watchdogs = [asyncio.create_task(watchdog) for watchdog in watchdogs]
        self.admission.open()

    async def stop(self) -> None:
        """Refuse requests, stop the engine, close the loopback client, and end every engine
        process still running."""
        self.admission.stop()
        for watchdog in self._watchdogs:
            watchdog.cancel()
        self.server = None
        await self.loopback.aclose()
        if self.run is not None and self.front_end_index == 0:
            # The engine serves the other workers too: stop it once they have drained.
            await lifecycle.until_siblings_exit(self.settings.shutdown_grace_s
                                                + SIBLING_EXIT_MARGIN_S)
        await self._stack.aclose()
        self.processes.reap()  # none may outlive the server, orphaned or not
        if self.run is not None and self.front_end_index == 0:
            self.run.remove()
