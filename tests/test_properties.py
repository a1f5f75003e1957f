"""Property tests (hypothesis) of our own request and settings models."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from vllm_bento.gate import OPEN_PATHS, bearer, is_gated, token_counts
from vllm_bento.settings import load_settings


def generate_input() -> type:
    from service import VLLM

    return VLLM.apis["generate"].input_spec  # type: ignore[attr-defined,no-any-return]


@settings(deadline=None)  # the first example imports the service
@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_generate_accepts_max_tokens_exactly_within_bounds(value: int) -> None:
    spec = generate_input()
    ok = 128 <= value <= 1024
    if ok:
        assert spec(max_tokens=value).max_tokens == value
    else:
        with pytest.raises(ValidationError) as info:
            spec(max_tokens=value)
        assert info.value.errors()[0]["loc"] == ("max_tokens",)


@settings(deadline=None)
@given(st.text(max_size=2000))
def test_generate_accepts_any_prompt_text(prompt: str) -> None:
    assert generate_input()(prompt=prompt).prompt == prompt


@given(st.integers(1, 10**6), st.integers(1, 10**6))
def test_settings_keep_room_for_the_prompt(max_tokens: int, max_model_len: int) -> None:
    valid = 128 <= max_tokens < max_model_len and max_model_len >= 256
    if valid:
        load_settings(max_tokens=max_tokens, max_model_len=max_model_len)
    else:
        with pytest.raises(ValidationError):
            load_settings(max_tokens=max_tokens, max_model_len=max_model_len)


@given(st.binary(max_size=5000))
def test_token_counts_never_fail(tail: bytes) -> None:
    prompt, completion = token_counts(tail)
    assert prompt == "-" or prompt.isdigit()


@given(st.text(max_size=200))
def test_bearer_parsing_never_fails(value: str) -> None:
    scope = {"headers": [(b"authorization", value.encode("utf-8", "surrogatepass"))]}
    assert isinstance(bearer(scope), str)


@given(st.text(max_size=100))
def test_model_routes_are_always_gated(path: str) -> None:
    if path.startswith(("/v1/", "/generate", "/tokenize", "/detokenize")):
        assert is_gated(path)
    if path in OPEN_PATHS:
        assert not is_gated(path)
