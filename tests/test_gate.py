"""The gate in front of the model routes, driven in-process with fake apps (unit tier)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from vllm_bento.admission import SHUTDOWN, Admission, Admitted, default_max_request_sequences
from vllm_bento.errors import StreamCutOff
from vllm_bento.gate import (
    LOOPBACK_HEADER,
    Disconnectable,
    Gate,
    requested_choices,
    token_counts,
)


def scope(path: str, headers: dict[str, str] | None = None) -> Scope:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return {"type": "http", "method": "POST", "path": path, "headers": raw}


async def receive() -> Message:
    await asyncio.sleep(3600)
    return {"type": "http.disconnect"}


def receiving(*chunks: bytes) -> Receive:
    """A client that sends its body in ``chunks`` (none: an empty body), then waits."""
    queue = list(chunks) or [b""]

    async def receive_() -> Message:
        if queue:
            chunk = queue.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(queue)}
        return await receive()

    return receive_


def app_streaming(chunks: list[bytes], delay: float = 0.0,
                  content_type: bytes = b"text/event-stream") -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", content_type)]})
        for c in chunks:
            await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": c, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    return app


def call(gate: Gate, s: Scope, *body: bytes) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(gate(s, receiving(*body), send))
    return sent


def status_and_body(sent: list[Message]) -> tuple[int, bytes]:
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent[1:])


def open_state(**kw: Any) -> Admission:
    state = Admission(**kw)
    state.open()
    return state


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/metrics", "/", "/docs.json", "/chat",
                                  "/chat/app.js", "/static_content/swagger-ui.css"])
def test_passes_open_routes_untouched_even_when_refusing(path: str) -> None:
    gate = Gate(app_streaming([b"ok"]), Admission())  # starting: gated routes refused
    assert status_and_body(call(gate, scope(path)))[0] == 200


@pytest.mark.parametrize("path", ["/v1/models", "/generate", "/tokenize", "/detokenize",
                                  "/a-route-added-later", "/chatty", "/readyz/x"])
def test_every_route_not_named_open_is_gated(path: str) -> None:
    gate = Gate(app_streaming([b"ok"]), Admission())  # starting: gated routes refused
    status, body = status_and_body(call(gate, scope(path)))
    assert status == 503 and json.loads(body)["error"]["type"] == "service_unavailable"


@pytest.mark.parametrize("auth", [None, "Bearer nope", "Basic k2", "Bearer"])
def test_refuses_missing_or_wrong_key_with_openai_401(auth: str | None) -> None:
    gate = Gate(app_streaming([b"ok"]), open_state(api_keys=("k1", "k2")))
    status, body = status_and_body(call(gate, scope("/generate", {"Authorization": auth}
                                                    if auth else {})))
    assert status == 401
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}


def test_accepts_any_configured_key_and_the_loopback_token() -> None:
    state = open_state(api_keys=("k1", "k2"))
    gate = Gate(app_streaming([b"ok"]), state)
    assert status_and_body(call(gate, scope("/v1/x", {"Authorization": "Bearer k2"})))[0] == 200
    loop = {LOOPBACK_HEADER: state.loopback_token}
    assert status_and_body(call(gate, scope("/v1/x", loop)))[0] == 200
    forged = {LOOPBACK_HEADER: "guess"}
    assert status_and_body(call(gate, scope("/v1/x", forged)))[0] == 401


def test_over_the_cap_is_429_with_retry_after_and_loopback_takes_no_slot() -> None:
    state = open_state(max_in_flight=1)
    state.admitted.add(Admitted(None))
    gate = Gate(app_streaming([b"ok"]), state)
    sent = call(gate, scope("/v1/chat/completions"))
    status, body = status_and_body(sent)
    assert status == 429 and json.loads(body)["error"]["type"] == "rate_limit_exceeded"
    assert (b"retry-after", b"1") in sent[0]["headers"]
    loop = {LOOPBACK_HEADER: state.loopback_token}
    assert status_and_body(call(gate, scope("/v1/chat/completions", loop)))[0] == 200
    assert state.in_flight == 1


def test_the_slot_is_free_before_the_last_byte_is_sent() -> None:
    """A closed-loop client sends its next request the moment it has the last byte: by then
    the slot must be free, or a client holding exactly the cap is refused."""
    state = open_state(max_in_flight=1)
    in_flight_at_send: list[tuple[bool, int]] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            in_flight_at_send.append((message.get("more_body", False), state.in_flight))

    gate = Gate(app_streaming([b"a", b"b"]), state)
    asyncio.run(gate(scope("/v1/chat/completions"), receiving(), send))
    assert in_flight_at_send == [(True, 1), (True, 1), (False, 0)]


def test_no_cap_until_the_engine_sets_one() -> None:
    state = open_state()  # LLM_MAX_IN_FLIGHT unset, engine not up yet: no cap to enforce
    for _ in range(3):
        state.admit(None)
    assert status_and_body(call(Gate(app_streaming([b"ok"]), state), scope("/v1/x")))[0] == 200


def test_in_flight_count_returns_to_zero_and_request_id_is_echoed() -> None:
    state = open_state()
    sent = call(Gate(app_streaming([b"a", b"b"]), state),
                scope("/generate", {"X-Request-Id": "abc"}))
    assert (b"x-request-id", b"abc") in sent[0]["headers"]
    assert state.in_flight == 0


def test_timeout_before_the_response_is_504() -> None:
    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(5)

    status, body = status_and_body(call(Gate(slow, open_state(request_timeout_s=0.1)),
                                        scope("/v1/chat/completions")))
    assert status == 504 and "time limit" in json.loads(body)["error"]["message"]


def test_timeout_of_an_openai_stream_ends_with_error_frame_and_done() -> None:
    gate = Gate(app_streaming([b"data: {}\n\n"] * 50, delay=0.05),
                open_state(request_timeout_s=0.3))
    status, body = status_and_body(call(gate, scope("/v1/chat/completions")))
    assert status == 200
    frames = body.decode().strip().split("\n\n")
    assert frames[-1] == "data: [DONE]" and '"type": "timeout"' in frames[-2]


def test_timeout_of_a_generate_stream_cuts_it_off() -> None:
    gate = Gate(app_streaming([b"text"] * 50, delay=0.05), open_state(request_timeout_s=0.3))
    with pytest.raises(StreamCutOff):
        call(gate, scope("/generate"))


@pytest.mark.parametrize("started", [False, True])
def test_a_request_cut_short_at_shutdown_is_aborted_and_answered_503(
        started: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="vllm_bento.access")
    state = open_state()
    seen: list[str] = []

    async def cut_by_the_drain(scope: Scope, receive: Receive, send: Send) -> None:
        if started:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
        for request in state.admitted:  # what Admission.drain does
            request.cut.set()
        assert (await receive())["type"] == "http.request"  # the body, replayed by the gate
        seen.append((await receive())["type"])

    sent = call(Gate(cut_by_the_drain, state), scope("/v1/chat/completions"))
    status, body = status_and_body(sent)
    assert seen == ["http.disconnect"]  # vLLM aborts the engine request on this
    if started:
        frames = body.decode().strip().split("\n\n")
        assert frames[-1] == "data: [DONE]" and '"type": "service_unavailable"' in frames[-2]
    else:
        assert status == 503 and json.loads(body)["error"]["message"] == SHUTDOWN
        assert (b"retry-after", b"1") in sent[0]["headers"]
    assert state.in_flight == 0 and "status=503" in caplog.text


def test_token_counts_come_from_the_last_usage() -> None:
    tail = (b'data: {"usage": null}\n\ndata: {"choices": [], "usage": {"prompt_tokens": 40, '
            b'"total_tokens": 168, "completion_tokens": 128}}\n\ndata: [DONE]\n\n')
    assert token_counts(tail) == ("40", "128")
    assert token_counts(b"plain text") == ("-", "-")


def test_timeout_tells_the_app_the_client_is_gone() -> None:
    """vLLM aborts the engine request when it sees the disconnect; the gate relies on that."""
    seen: list[str] = []

    async def listening(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        assert (await receive())["type"] == "http.request"  # the body, replayed by the gate
        seen.append((await receive())["type"])

    call(Gate(listening, open_state(request_timeout_s=0.2)), scope("/v1/chat/completions"))
    assert seen == ["http.disconnect"]


def test_a_receive_the_app_cancels_leaves_no_task_behind() -> None:
    """Apps cancel their receive call when a stream ends; its helper tasks must go with it (a
    pending task that is garbage-collected logs "Task was destroyed but it is pending!")."""

    async def cancel_a_receive() -> set[asyncio.Task[Any]]:
        call = asyncio.ensure_future(Disconnectable(receive)())
        await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.sleep(0)
        return asyncio.all_tasks() - {asyncio.current_task()}

    assert asyncio.run(cancel_a_receive()) == set()


@pytest.mark.parametrize("given", ["abc status=200 prompt_tokens=999999 path=/fake", "ïd-ü",
                                   "x" * 129, ""])
def test_an_unsafe_request_id_is_replaced_not_echoed(given: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="vllm_bento.access")
    s = scope("/v1/x")
    s["headers"].append((b"x-request-id", given.encode()))
    sent = call(Gate(app_streaming([b"ok"]), open_state()), s)
    echoed = dict(sent[0]["headers"])[b"x-request-id"].decode()
    assert echoed != given and len(echoed) == 32  # a fresh uuid4 hex
    assert "prompt_tokens=999999" not in caplog.text and f"request_id={echoed}" in caplog.text


def test_a_safe_request_id_is_kept() -> None:
    s = scope("/v1/x", {"X-Request-Id": "req-2026.11:30_abc"})
    sent = call(Gate(app_streaming([b"ok"]), open_state()), s)
    assert (b"x-request-id", b"req-2026.11:30_abc") in sent[0]["headers"]


@pytest.mark.parametrize("given", [None, "abc status=200 path=/fake", "req-7"])
def test_the_app_sees_the_request_id_the_gate_logs(given: str | None) -> None:
    """vLLM names its request after ``X-Request-Id``: it must be the gate's id, and the only
    one (a replaced unsafe id must not reach the app)."""
    seen: list[list[bytes]] = []

    async def app(s: Scope, receive: Receive, send: Send) -> None:
        seen.append([v for k, v in s["headers"] if k == b"x-request-id"])
        await app_streaming([b"ok"])(s, receive, send)

    s = scope("/v1/x", {"X-Request-Id": given} if given else None)
    sent = call(Gate(app, open_state()), s)
    assert seen == [[dict(sent[0]["headers"])[b"x-request-id"]]]
    if given == "req-7":
        assert seen == [[b"req-7"]]


def test_admitted_requests_under_a_direct_prefix_skip_the_rest_of_the_stack() -> None:
    """``direct``: ``/v1/`` goes straight to its app, admitted, with the gate's request id and
    time limit; other routes go down the stack; refused requests reach neither."""
    stack, v1 = app_streaming([b"stack"]), app_streaming([b"data: v1\n\n"])
    state = open_state(max_in_flight=1)
    gate = Gate(stack, state, direct={"/v1/": v1})
    sent = call(gate, scope("/v1/chat/completions"))
    assert status_and_body(sent) == (200, b"data: v1\n\n")
    assert b"x-request-id" in dict(sent[0]["headers"])
    assert status_and_body(call(gate, scope("/generate"))) == (200, b"stack")
    assert status_and_body(call(gate, scope("/v1"))) == (200, b"data: v1\n\n")  # bare prefix
    assert status_and_body(call(gate, scope("/v1x"))) == (200, b"stack")  # not under "/v1/"
    assert state.in_flight == 0
    refusing = Gate(stack, Admission(), direct={"/v1/": v1})  # starting: gated routes refused
    assert status_and_body(call(refusing, scope("/v1/models")))[0] == 503


def test_a_direct_route_still_has_the_time_limit() -> None:
    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(5)

    gate = Gate(app_streaming([b"ok"]), open_state(request_timeout_s=0.1), direct={"/v1/": slow})
    assert status_and_body(call(gate, scope("/v1/chat/completions")))[0] == 504


# -- bodies, n and sequences -----------------------------------------------------------------

def echo_body(s: Scope, receive: Receive, send: Send) -> Any:
    """An app that answers with the body it read."""
    async def app(s: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body, "more_body": False})
    return app(s, receive, send)


def test_the_app_reads_the_body_the_gate_read_whole() -> None:
    sent = call(Gate(echo_body, open_state()), scope("/v1/chat/completions"),
                b'{"messages": ', b'[], "n": 2}')
    assert status_and_body(sent) == (200, b'{"messages": [], "n": 2}')


def test_a_body_over_the_limit_by_its_content_length_is_413_unread() -> None:
    read: list[Message] = []

    async def recording() -> Message:
        read.append({})
        return {"type": "http.request", "body": b"x" * 11, "more_body": False}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    gate = Gate(echo_body, open_state(max_body_bytes=10))
    asyncio.run(gate(scope("/v1/chat/completions", {"Content-Length": "11"}), recording, send))
    status, body = status_and_body(sent)
    assert status == 413 and read == []
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and "10 bytes" in error["message"]


def test_a_body_over_the_limit_as_it_arrives_is_413() -> None:
    """Chunked: no Content-Length, so the limit is checked as the chunks come."""
    gate = Gate(echo_body, open_state(max_body_bytes=10))
    status, body = status_and_body(call(gate, scope("/v1/completions"), b"x" * 6, b"x" * 6))
    assert status == 413 and json.loads(body)["error"]["code"] == 413
    exact = call(gate, scope("/v1/completions"), b"x" * 6, b"x" * 4)
    assert status_and_body(exact) == (200, b"x" * 10)


def test_a_body_that_does_not_arrive_in_time_is_408() -> None:
    sent_first = False

    async def one_byte_then_silence() -> Message:
        nonlocal sent_first
        if not sent_first:
            sent_first = True
            return {"type": "http.request", "body": b"{", "more_body": True}
        return await receive()

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    gate = Gate(echo_body, open_state(body_timeout_s=0.05))
    asyncio.run(gate(scope("/v1/chat/completions"), one_byte_then_silence, send))
    status, body = status_and_body(sent)
    assert status == 408 and "0.05 s" in json.loads(body)["error"]["message"]


def test_a_client_still_sending_its_body_holds_no_slot() -> None:
    """Cap 1: a client that sent headers and one byte, and is held there by this test, does
    not keep another client out."""
    state = open_state(max_in_flight=1, body_timeout_s=3600)
    gate = Gate(echo_body, state)

    async def scenario() -> tuple[int, int, list[Message]]:
        waiting = asyncio.Event()

        async def one_byte_then_wait() -> Message:
            if not waiting.is_set():
                waiting.set()
                return {"type": "http.request", "body": b"{", "more_body": True}
            return await receive()

        idle_sent: list[Message] = []

        async def idle_send(message: Message) -> None:
            idle_sent.append(message)

        idle = asyncio.ensure_future(gate(scope("/v1/chat/completions"), one_byte_then_wait,
                                          idle_send))
        await waiting.wait()
        await asyncio.sleep(0)  # the gate is back in its read of the idle client's body
        in_flight = state.in_flight
        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)

        await gate(scope("/v1/chat/completions"), receiving(b"{}"), send)
        idle.cancel()
        return in_flight, state.in_flight, sent + idle_sent

    in_flight, after, sent = asyncio.run(scenario())
    assert in_flight == 0 and after == 0
    assert status_and_body(sent) == (200, b"{}")  # only the complete request was answered


def test_a_client_that_leaves_while_sending_gets_no_answer(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="vllm_bento.access")
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def gone() -> Message:
        return {"type": "http.disconnect"}

    asyncio.run(Gate(echo_body, open_state())(scope("/v1/chat/completions"), gone, send))
    assert sent == [] and "status=None" in caplog.text


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_n_over_max_n_is_400_naming_n(path: str) -> None:
    gate = Gate(echo_body, open_state(max_n=128))
    status, body = status_and_body(call(gate, scope(path), b'{"n": 129}'))
    error = json.loads(body)["error"]
    assert status == 400 and error["param"] == "n" and "128" in error["message"]
    assert status_and_body(call(gate, scope(path), b'{"n": 128}'))[0] == 200


@pytest.mark.parametrize(("body", "sequences"), [
    (b'{"n": 3}', 3),
    (b'{"n": 4}', 4),
    (b'{"prompt": ["a", "b"], "n": 2}', 4),
    (b'{"prompt": [[1, 2], [3]]}', 2),
    (b'{"prompt": [1, 2, 3]}', 1),  # one prompt as token ids
])
def test_a_request_takes_one_slot_per_sequence(body: bytes, sequences: int) -> None:
    """Cap 4 with one sequence already in flight: 3 more fit, 4 do not."""
    state = open_state(max_in_flight=4)
    state.admit(None)
    seen: list[int] = []

    async def app(s: Scope, receive: Receive, send: Send) -> None:
        seen.append(state.sequences_in_flight)
        await echo_body(s, receive, send)

    status = status_and_body(call(Gate(app, state), scope("/v1/completions"), body))[0]
    assert status == (200 if sequences <= 3 else 429)
    assert seen == ([1 + sequences] if sequences <= 3 else [])
    assert state.sequences_in_flight == 1


@pytest.mark.parametrize("body", [b'{"n": 0}', b'{"n": "nine"}', b'{"n": [2]}', b"{not json",
                                  b'["n": 9]', b'{"n": 2.5}', b'{"n": -3}'])
def test_a_body_vllm_will_refuse_counts_one_sequence(body: bytes) -> None:
    assert requested_choices("/v1/chat/completions", body) == (1, 1)


@pytest.mark.parametrize(("body", "choices"), [
    # vLLM reads n as pydantic's lax int: all of these are 100 choices to it (a tester got 100
    # choices past a bound that only read JSON integers).
    (b'{"n": "100"}', (100, 1)), (b'{"n": 100.0}', (100, 1)), (b'{"\\u006e": 100}', (100, 1)),
    (b'{"n": 4, "\\u0070rompt": ["a", "b", "c"]}', (4, 3)),
])
def test_n_and_prompts_are_read_as_vllm_reads_them(body: bytes, choices: tuple[int, int]) -> None:
    assert requested_choices("/v1/completions", body) == choices


def test_only_the_routes_that_take_n_are_parsed_for_it() -> None:
    assert requested_choices("/v1/chat/completions", b'{"n": 5}') == (5, 1)
    assert requested_choices("/v1/responses", b'{"n": 5}') == (1, 1)
    # Chat has no list of prompts: "prompt" there is not a field vLLM reads.
    assert requested_choices("/v1/chat/completions", b'{"prompt": ["a", "b"]}') == (1, 1)


def test_a_request_bigger_than_the_cap_runs_alone() -> None:
    state = open_state(max_in_flight=4)
    assert state.has_room(100)  # nothing in flight: it would never fit otherwise
    state.admit(None)
    assert not state.has_room(100) and state.has_room(3) and not state.has_room(4)


def test_one_request_may_ask_for_at_most_half_the_engines_batch() -> None:
    """vLLM runs each of the n choices as a sequence of its batch: a request asking for the
    whole batch would make every other request wait for it."""
    state = open_state(max_request_sequences=4)
    gate = Gate(echo_body, state)
    assert status_and_body(call(gate, scope("/v1/chat/completions"), b'{"n": 4}'))[0] == 200
    for path, body in (("/v1/chat/completions", b'{"n": 5}'),
                       ("/v1/completions", b'{"n": 3, "prompt": ["a", "b"]}')):
        status, answer = status_and_body(call(gate, scope(path), body))
        error = json.loads(answer)["error"]
        assert status == 400 and error["param"] == "n", answer
        assert "at most 4 at once" in error["message"]


def test_the_request_bound_is_half_the_engines_max_num_seqs() -> None:
    assert default_max_request_sequences(128) == 64  # this CPU's vLLM default
    assert default_max_request_sequences(1024) == 512  # an H200's
    assert default_max_request_sequences(1) == 1


def test_refusals_on_the_anthropic_route_are_in_anthropics_shape() -> None:
    gate = Gate(app_streaming([b"ok"]), open_state(api_keys=("k1",)))
    status, body = status_and_body(call(gate, scope("/v1/messages")))
    assert status == 401
    assert json.loads(body) == {"type": "error", "error": {
        "type": "authentication_error",
        "message": "Invalid or missing API key: send 'Authorization: Bearer <key>'."}}


def test_a_timed_out_anthropic_stream_ends_with_anthropics_error_event() -> None:
    gate = Gate(app_streaming([b"event: ping\ndata: {}\n\n"] * 50, delay=0.05),
                open_state(request_timeout_s=0.3))
    status, body = status_and_body(call(gate, scope("/v1/messages")))
    assert status == 200
    last = body.decode().strip().split("\n\n")[-1]
    event, data = last.split("\n")
    assert event == "event: error"
    assert json.loads(data.removeprefix("data: ")) == {"type": "error", "error": {
        "type": "timeout_error",
        "message": "The request did not finish within the time limit of 0.3 s."}}


@pytest.mark.parametrize("path", ["/v1/chat/completions/", "/generate/", "/readyz/", "/v1/"])
def test_a_path_with_a_trailing_slash_is_404_not_a_redirect(path: str) -> None:
    gate = Gate(app_streaming([b"ok"]), open_state())
    status, body = status_and_body(call(gate, scope(path)))
    assert status == 404 and json.loads(body)["error"]["message"] == f"Invalid URL (POST {path})"


def test_the_bare_direct_prefix_goes_to_its_app() -> None:
    v1 = app_streaming([b"v1"])
    gate = Gate(app_streaming([b"stack"]), open_state(), direct={"/v1/": v1})
    assert gate.inner_app("/v1") is v1 and gate.inner_app("/v1x") is gate.app


def test_bodies_in_transfer_have_a_budget() -> None:
    """Many slow clients sending big bodies would hold all of them in memory until their
    deadline: past the budget (32 largest bodies) a new chunk gets 503 with Retry-After."""
    state = open_state(max_body_bytes=10)
    assert state.max_bytes_in_transfer == 320
    state.bytes_in_transfer = 315  # held by other clients still sending
    gate = Gate(echo_body, state)
    sent = call(gate, scope("/v1/chat/completions"), b"x" * 9)
    status, body = status_and_body(sent)
    assert status == 503 and json.loads(body)["error"]["type"] == "service_unavailable"
    assert (b"retry-after", b"1") in sent[0]["headers"]
    assert state.bytes_in_transfer == 315
    state.bytes_in_transfer = 0
    assert status_and_body(call(gate, scope("/v1/chat/completions"), b"x" * 9))[0] == 200
    assert state.bytes_in_transfer == 0  # released once the body is in
