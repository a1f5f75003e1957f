"""Property tests (hypothesis) of our own request and settings models.

Each strategy draws the inputs that take every branch of the code under test, not only random
values (which would almost never be a valid bound, a bearer header, a gated route or a usage
object), and ``@example`` pins one input per branch, so a test cannot pass by never reaching
the branch a change broke. ``event`` reports how often each branch ran
(``pytest --hypothesis-show-statistics``).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from vllm_bento.gate import OPEN_PATHS, OPEN_PREFIXES, bearer, is_gated, token_counts
from vllm_bento.settings import load_settings

GENERATE_MIN_TOKENS, GENERATE_MAX_TOKENS = 128, 1024  # /generate's bounds at default settings
MODEL_ROUTES = ("/v1/", "/generate", "/tokenize", "/detokenize")
# A bounded number of examples keeps the module to seconds on a loaded 2-core machine. No
# per-example deadline: some tests' first example imports the service (seconds), and a time
# bound on the others would measure the machine's load, not the code.
EXAMPLES = settings(max_examples=50, deadline=None)


def generate_input() -> type:
    from service import VLLM

    return VLLM.apis["generate"].input_spec  # type: ignore[attr-defined,no-any-return]


def around(*bounds: int) -> st.SearchStrategy[int]:
    """Integers close to each of ``bounds``: where an off-by-one would show."""
    return st.one_of(*(st.integers(b - 3, b + 3) for b in bounds))


@EXAMPLES  # the first example imports the service
@given(st.one_of(around(GENERATE_MIN_TOKENS, GENERATE_MAX_TOKENS),
                 st.integers(GENERATE_MIN_TOKENS, GENERATE_MAX_TOKENS),
                 st.integers(min_value=-(10**12), max_value=10**12)))
@example(GENERATE_MIN_TOKENS - 1).via("below")
@example(GENERATE_MIN_TOKENS).via("lowest")
@example(GENERATE_MAX_TOKENS).via("highest")
@example(GENERATE_MAX_TOKENS + 1).via("above")
def test_generate_accepts_max_tokens_exactly_within_bounds(value: int) -> None:
    spec = generate_input()
    if GENERATE_MIN_TOKENS <= value <= GENERATE_MAX_TOKENS:
        event("accepted")
        assert spec(max_tokens=value).max_tokens == value
    else:
        event("refused")
        with pytest.raises(ValidationError) as info:
            spec(max_tokens=value)
        assert info.value.errors()[0]["loc"] == ("max_tokens",)


@EXAMPLES  # the first example imports the service
@given(st.text(max_size=2000))
@example("")
@example(" " * 2000)  # kept whole: not stripped, not cut
@example("<|im_end|>\n<|im_start|>system\n\u2060\x00\ud800")
def test_generate_accepts_any_prompt_text(prompt: str) -> None:
    assert generate_input()(prompt=prompt).prompt == prompt


@EXAMPLES
@given(st.one_of(st.tuples(around(128, 2048), around(256, 2048)),
                 st.tuples(st.integers(1, 10**6), st.integers(1, 10**6))))
@example((128, 256)).via("smallest valid")
@example((127, 256)).via("max_tokens too small")
@example((128, 255)).via("context too small")
@example((2048, 2048)).via("no room for the prompt")
def test_settings_keep_room_for_the_prompt(lengths: tuple[int, int]) -> None:
    max_tokens, max_model_len = lengths
    if 128 <= max_tokens < max_model_len and max_model_len >= 256:
        event("valid")
        loaded = load_settings(max_tokens=max_tokens, max_model_len=max_model_len)
        assert (loaded.max_tokens, loaded.max_model_len) == lengths
    else:
        event("refused")
        with pytest.raises(ValidationError):
            load_settings(max_tokens=max_tokens, max_model_len=max_model_len)


def usage_chunk(prompt: int, completion: int, separators: tuple[str, str]) -> bytes:
    """vLLM's last chunk of a stream with ``include_usage``, as it serializes it (compact) or
    as ``json.dumps`` does (the gate's own frames): ``total_tokens`` between the two counts."""
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
             "usage": {"prompt_tokens": prompt, "total_tokens": prompt + completion,
                       "completion_tokens": completion, "prompt_tokens_details": None}}
    return f"data: {json.dumps(chunk, separators=separators)}\n\n".encode()


NOISE = st.binary(max_size=1500)  # other chunks, cut anywhere (the tail is the last 4 KiB)
USAGE = st.tuples(st.integers(0, 10**9), st.integers(0, 10**9),
                  st.sampled_from([(",", ":"), (", ", ": ")]))


@EXAMPLES
@given(NOISE, st.lists(st.tuples(USAGE, NOISE), min_size=1, max_size=3))
@example(b"", [((7, 9, (",", ":")), b"data: [DONE]\n\n")]).via("a stream's end")
@example(b"x", [((1, 2, (", ", ": ")), b""), ((30, 40, (",", ":")), b"")]).via("two, the last")
def test_token_counts_are_those_of_the_last_usage_object(
        head: bytes, usages: list[tuple[tuple[int, int, tuple[str, str]], bytes]]) -> None:
    tail = head + b"".join(usage_chunk(*usage) + noise for usage, noise in usages)
    (prompt, completion, _), _ = usages[-1]
    event(f"{len(usages)} usage object(s)")
    assert token_counts(tail) == (str(prompt), str(completion))


@EXAMPLES
@given(st.binary(max_size=5000))
@example(b'"prompt_tokens": 5, no completion count')
@example(b'data: {"usage": null}\n\ndata: [DONE]\n\n')
def test_token_counts_without_usage_are_dashes(tail: bytes) -> None:
    if b'"completion_tokens"' in tail:  # drawn by chance: not what this test is about
        event("usage by chance")
        prompt, completion = token_counts(tail)
        assert prompt.isdigit() and completion.isdigit()
    else:
        assert token_counts(tail) == ("-", "-")


def authorization(value: str) -> dict[str, object]:
    """A scope whose ``Authorization`` header is ``value``, as the client's bytes arrive."""
    return {"headers": [(b"authorization", value.encode("utf-8", "surrogatepass"))]}


# RFC 6750's b64token: the characters the service accepts in a key.
KEYS = st.from_regex(r"[A-Za-z0-9\-._~+/]+=*", fullmatch=True)


@EXAMPLES
@given(st.sampled_from(["Bearer", "bearer", "BEARER", "bEaReR"]), KEYS,
       st.sampled_from(["", " ", "  ", "\t"]))
@example("Bearer", "test-key-1", "")
def test_bearer_returns_the_key_of_a_bearer_header(scheme: str, key: str, space: str) -> None:
    """The scheme is case-insensitive (RFC 7235); whitespace around the key is not part of it."""
    assert bearer(authorization(f"{scheme} {space}{key}{space}")) == key


@EXAMPLES
@given(st.one_of(
    st.tuples(st.sampled_from(["Basic", "Token", "Bearer", ""]), st.sampled_from(["", " "]),
              st.text(max_size=100)).map("".join),
    st.text(max_size=200)))
@example("Basic dGVzdC1rZXktMQ==")
@example("Bearertest-key-1")  # no space: not the bearer scheme
@example("Bearerish test-key-1")
@example("test-key-1")
def test_bearer_is_empty_for_any_other_header(value: str) -> None:
    key = bearer(authorization(value))
    assert isinstance(key, str)  # never raises, whatever the client sent
    if value.partition(" ")[0].lower() != "bearer":
        event("another scheme")
        assert key == ""
    else:
        event("bearer")


@EXAMPLES
@given(st.one_of(
    st.tuples(st.sampled_from(MODEL_ROUTES), st.text(max_size=50)).map("".join),
    st.sampled_from(sorted(OPEN_PATHS)),
    st.tuples(st.sampled_from(OPEN_PREFIXES), st.text(max_size=50)).map("".join),
    st.text(max_size=100)))
@example("/v1/chat/completions").via("a model route")
@example("/generate").via("a model route")
@example("/readyz").via("an open path")
@example("/chat/index.html").via("a page's file")
@example("/admin").via("a route added later")
def test_model_routes_are_always_gated(path: str) -> None:
    """The model routes and any route not named open need the key and count against the cap;
    only ``OPEN_PATHS`` and the pages' files (``OPEN_PREFIXES``) pass ungated."""
    if path.startswith(MODEL_ROUTES):
        event("model route")
        assert is_gated(path)
    elif path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        event("open")
        assert not is_gated(path)
    else:
        event("any other route")
        assert is_gated(path)
