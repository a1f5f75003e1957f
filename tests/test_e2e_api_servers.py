"""Two API servers (``LLM_API_SERVER_COUNT=2``: two BentoML workers, each a vLLM front end)
over one engine, served as users serve it and reached through the clients they use: every
worker answers, one engine serves them, the in-flight cap is the server's, metrics count each
request once, SIGTERM drains both and leaves nothing, and a dead engine or a dead worker ends
the whole server non-zero with nothing left behind."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
from collections.abc import Iterator

import httpx
import openai
import psutil
import pytest

from tests import served
from tests.conftest import MODEL
from tests.metrics import finished_requests, scrape, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TWO = {"LLM_API_SERVER_COUNT": "2", "LLM_MAX_IN_FLIGHT": "2"}
SERVERS: dict[str, dict[str, str]] = {  # started early (conftest)
    "api-servers": TWO, "api-servers-engine-death": TWO, "api-servers-worker-death": TWO}
WORKER_LINE = re.compile(r"request_id=(\S+) .* worker=(\d+)")
MAX_TRIES = 200  # requests on fresh connections until each worker has answered one
FIRST_CHUNK_TIMEOUT_S = 120.0
EXIT_TIMEOUT_S = 60.0
LONG = 1900  # tokens: a stream still running while the test acts on the server


def workers(server: served.Served) -> list[psutil.Process]:
    return [p for p in server.descendants() if "_bentoml_impl.worker" in " ".join(p.cmdline())]


def engine_cores(server: served.Served) -> list[psutil.Process]:
    return [p for p in server.descendants() if "EngineCore" in p.name()]


def chat(url: str, max_tokens: int = 8) -> httpx.Response:
    body = {"model": MODEL, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "Say hi."}]}
    with httpx.Client(timeout=120) as client:  # a fresh connection each time
        return client.post(f"{url}/v1/chat/completions", json=body)


class HeldStream:
    """A long chat stream read in a thread: ``started`` once its first chunk came."""

    def __init__(self, url: str, max_tokens: int = LONG) -> None:
        self.started, self.ended = threading.Event(), threading.Event()
        self.release = threading.Event()
        self.status: int | None = None
        self.finish_reason: str | None = None
        self.done = False
        body = {"model": MODEL, "stream": True, "max_tokens": max_tokens, "ignore_eos": True,
                "messages": [{"role": "user", "content": "Tell a very long story."}]}
        threading.Thread(target=self._read, args=(url, body), daemon=True).start()

    def _read(self, url: str, body: dict[str, object]) -> None:
        try:
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body,
                              timeout=300) as r:
                self.status = r.status_code
                for line in r.iter_lines():
                    if line == "data: [DONE]":
                        self.done = True
                    elif line.startswith("data:"):
                        self.started.set()
                        if '"finish_reason":"' in line.replace(" ", ""):
                            self.finish_reason = line.split('"finish_reason":')[1].split('"')[1]
                    if self.release.is_set():
                        return  # the client leaves; vLLM aborts the request
        except httpx.HTTPError:
            pass
        finally:
            self.started.set()
            self.ended.set()


def left_behind(processes: list[psutil.Process]) -> list[tuple[int, str]]:
    _, alive = psutil.wait_procs(processes, timeout=15)
    return [(p.pid, p.name()) for p in alive
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture(scope="module")
def server() -> Iterator[served.Served]:
    server = served.start("api-servers", TWO)
    served.wait_ready(server)
    yield server
    if server.process.poll() is None:
        served.stop_later(server)


def test_one_engine_serves_two_workers_and_each_answers(server: served.Served) -> None:
    assert len(engine_cores(server)) == 1, [p.name() for p in server.descendants()]
    assert len(workers(server)) == 2
    # The kernel hands each new connection to one of the workers sharing the socket: keep
    # asking on fresh connections until both have answered (each id names its worker).
    seen: dict[str, str] = {}
    for _ in range(MAX_TRIES):
        response = chat(server.url)
        assert response.status_code == 200, response.text
        request_id = response.headers["x-request-id"]
        seen.setdefault(request_id.split("-", 1)[0], request_id)
        if len(seen) == 2:
            break
    assert set(seen) == {"0", "1"}, seen
    def logged() -> dict[str, str]:
        return {m.group(1): m.group(2) for m in WORKER_LINE.finditer(server.log.read_text())}

    # Each worker writes its log lines as it goes: wait for both to be in the file.
    wait_for(lambda: seen.keys() <= set(logged().values()), 30, "both workers' log lines",
             seen=logged)
    for worker, request_id in seen.items():
        assert logged().get(request_id) == worker, (request_id, worker)
    # /generate loops back in its own worker and streams, through BentoML's client.
    with httpx.Client(base_url=server.url, timeout=120) as client:
        text = client.post("/generate", json={"prompt": "Hello", "max_tokens": 128})
    assert text.status_code == 200 and text.text.strip()


def test_the_in_flight_cap_is_the_servers_not_each_workers(server: served.Served) -> None:
    """LLM_MAX_IN_FLIGHT=2 with two workers: two streams held open, wherever they landed, and
    the next request is refused with 429 by whichever worker it reaches."""
    held = [HeldStream(server.url), HeldStream(server.url)]
    try:
        for stream in held:
            assert stream.started.wait(FIRST_CHUNK_TIMEOUT_S) and stream.status == 200
        for _ in range(4):  # fresh connections, landing on either worker
            refused = chat(server.url)
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["type"] == "rate_limit_exceeded"
            assert "limit 2 sequences" in refused.json()["error"]["message"]
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(
                model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    finally:
        for stream in held:
            stream.release.set()
    for stream in held:
        assert stream.ended.wait(60)
    # The slots come back: the held requests' workers released them.
    wait_for(lambda: chat(server.url).status_code == 200, 60, "a request admitted again")


def test_metrics_count_each_request_once(server: served.Served) -> None:
    before_vllm = finished_requests(server.url)
    before_bentoml = scrape(server.url, "bentoml_service_request_total",
                            endpoint="/v1/chat/completions", http_response_code="200") or 0
    for _ in range(6):
        assert chat(server.url).status_code == 200
    assert finished_requests(server.url) - before_vllm == 6
    assert (scrape(server.url, "bentoml_service_request_total", endpoint="/v1/chat/completions",
                   http_response_code="200") or 0) - before_bentoml == 6


def test_sigterm_drains_both_workers_then_the_engine_stops(server: served.Served) -> None:
    """Last in this module: it stops the server."""
    stream = HeldStream(server.url, max_tokens=256)
    assert stream.started.wait(FIRST_CHUNK_TIMEOUT_S) and stream.status == 200
    processes = server.descendants()
    server.process.send_signal(signal.SIGTERM)
    assert stream.ended.wait(120)
    code = server.process.wait(EXIT_TIMEOUT_S)
    assert stream.done and stream.finish_reason == "length", vars(stream)
    assert code == 0, server.log_tail()
    assert not left_behind(processes)


def _kill_and_wait(name: str, victim: str) -> tuple[int | None, list[tuple[int, str]], str]:
    server = served.start(name, TWO)
    try:
        served.wait_ready(server)
        processes = server.descendants()
        engine = engine_cores(server)[0]
        target = engine if victim == "engine" else engine.parent()  # the worker launching it
        target.kill()
        try:
            code: int | None = server.process.wait(EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = None
        return code, left_behind(processes), server.log_tail(30)
    finally:
        served.stop(server)


def test_a_dead_engine_ends_the_whole_server() -> None:
    code, left, log = _kill_and_wait("api-servers-engine-death", "engine")
    assert code not in (0, None), log
    assert not left, left


def test_a_dead_worker_ends_the_whole_server_and_its_engine() -> None:
    """The first worker launched the engine: killed, its engine would be orphaned and the other
    worker would serve on without it coming back (circus restarts it only outside a
    container). The server stops as ``vllm serve`` does when an API server dies."""
    code, left, log = _kill_and_wait("api-servers-worker-death", "worker")
    assert code not in (0, None), log
    assert not left, left
    assert "API server worker(s)" in log and "died" in log, log
