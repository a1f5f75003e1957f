"""``python -m bench.layer.inprocess``: the service's layer cost per streamed chunk with no
sockets, HTTP parsing or client in the way, so differences of a few µs show through.

The service's ASGI app (``bench.layer.service``: BentoML's app and middlewares, the gate, the
``/v1`` forwarder, in front of ``bench.layer.standin``) and the stand-in alone are each called
directly with ``--concurrency`` concurrent ``/v1/chat/completions`` streams of 128 chunks, in
alternating rounds, and the service's ``/generate`` likewise (its loopback included); each round
prints the process's CPU time per chunk. ``--without-direct`` turns ``Gate.direct`` off
(admitted ``/v1`` requests then go down BentoML's stack), to compare.

Numbers are CPU µs per chunk of this one process (on uvloop, as the server), medians over the
rounds; run it on a machine with nothing else busy. ``make bench-layer`` measures the same path
over HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import time
from typing import Any

from starlette.types import ASGIApp, Message

from bench.layer import service as layer_service  # swaps in the stand-in before the service
from bench.layer.standin import app as standin_app

CHAT = ("/v1/chat/completions", json.dumps({
    "model": "standin", "messages": [{"role": "user", "content": "hi"}], "stream": True,
    "max_tokens": 128}).encode())
GENERATE = ("/generate", json.dumps({"prompt": "hi", "max_tokens": 128}).encode())


def request_scope(path: str, body: bytes) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
            "query_string": b"", "server": ("127.0.0.1", 3000), "client": ("127.0.0.1", 50000),
            "headers": [(b"host", b"127.0.0.1:3000"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())]}


async def one_stream(app: ASGIApp, route: tuple[str, bytes]) -> int:
    """One request through ``app``; the body messages it sent with text in them."""
    path, body = route
    done, asked = asyncio.Event(), False
    sent = 0

    async def receive() -> Message:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()  # the client stays until the answer ends
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal sent
        if message["type"] == "http.response.body":
            sent += bool(message.get("body"))
            if not message.get("more_body", False):
                done.set()

    await app(request_scope(path, body), receive, send)
    return sent


async def cpu_us_per_chunk(app: ASGIApp, route: tuple[str, bytes], requests: int,
                           concurrency: int) -> float:
    start, chunks = time.process_time(), 0
    for _ in range(requests // concurrency):
        chunks += sum(await asyncio.gather(*(one_stream(app, route)
                                             for _ in range(concurrency))))
    return (time.process_time() - start) / chunks * 1e6


async def lifespan(event: str, inbox: asyncio.Queue[Message],
                   outbox: asyncio.Queue[Message]) -> None:
    """Send the app's lifespan ``event`` (``startup``, ``shutdown``) and wait for its reply."""
    await inbox.put({"type": f"lifespan.{event}"})
    reply = await asyncio.wait_for(outbox.get(), 120)
    if not reply["type"].endswith(".complete"):
        raise RuntimeError(f"lifespan {event}: {reply}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    bento_service: Any = layer_service.VLLM  # the decorator made it a bentoml.Service (untyped)
    if args.without_direct:
        for _, options in bento_service.middlewares:
            if "direct" in options:
                options["direct"] = {}
    service_app = bento_service.to_asgi()
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    running = asyncio.ensure_future(service_app(
        {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, outbox.put))
    await lifespan("startup", inbox, outbox)
    systems = (("standin", standin_app, CHAT), ("service", service_app, CHAT),
               ("generate", service_app, GENERATE))
    figures: dict[str, list[float]] = {name: [] for name, _, _ in systems}
    try:
        for _ in range(args.rounds):
            for name, app, route in systems:
                await cpu_us_per_chunk(app, route, args.concurrency * 4, args.concurrency)
                figures[name].append(round(await cpu_us_per_chunk(
                    app, route, args.requests, args.concurrency), 2))
                logging.info("%-8s %.2f CPU us per chunk", name, figures[name][-1])
    finally:
        await lifespan("shutdown", inbox, outbox)
        await running
    standin, service, generate = (statistics.median(figures[name]) for name, _, _ in systems)
    return {"benchmark": "bench.layer.inprocess", "direct": not args.without_direct,
            "rounds": figures, "standin_cpu_us_per_chunk": standin,
            "service_cpu_us_per_chunk": service,
            "added_cpu_us_per_chunk": round(service - standin, 2),
            "generate_cpu_us_per_chunk": generate}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.layer.inprocess", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=1600, help="per round and system")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--without-direct", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("vllm_bento.access").setLevel(logging.WARNING)  # a line per request
    import uvloop  # the event loop the service's uvicorn runs on

    print(json.dumps(uvloop.run(run(args))))


if __name__ == "__main__":
    main()
