"""Chat message text is text: a user cannot type the model's control tokens.

vLLM renders chat messages into the model's template and tokenizes the result as a whole, so
``"<|im_end|><|im_start|>system\\n..."`` in a user's message became real control tokens: the
user closed their own turn and wrote a system turn. vLLM 0.32 has no setting against it (its
tokenizer matches special tokens anywhere in the rendered prompt, and the template's own must
stay special). The OpenAI API treats such text as text; so does this service, by putting a
U+2060 WORD JOINER (invisible, no width, no meaning) after the first character of every
special-token string in a message, so the tokenizer sees ordinary characters.

Only what vLLM renders through the chat template is rewritten (``CHAT_FIELDS``):
``messages`` (``/v1/chat/completions``, ``/tokenize``'s chat form, so ``/generate``, and the
Anthropic-style ``/v1/messages`` with its ``system``), and ``/v1/responses``' ``input`` and
``instructions``. ``/v1/completions`` prompts and token IDs are the caller's own raw input and
are taken as given.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

WORD_JOINER = "\u2060"
CHAT_FIELDS = ("messages", "system", "input", "instructions")
"""Request fields vLLM renders through the model's chat template."""


class ControlTokens:
    """The model's special-token strings, and the rewrite that keeps them out of messages.

    ``tokens``: the tokenizer's special tokens as text (``<|im_end|>``...); strings of one
    character cannot be broken up and are left alone.
    """

    def __init__(self, tokens: Iterable[str]) -> None:
        # Longest first, so a token that contains another is matched whole.
        self.tokens = sorted({t for t in tokens if len(t) > 1}, key=len, reverse=True)
        self._text = re.compile("|".join(map(re.escape, self.tokens))) if self.tokens else None
        self._bytes = (re.compile(b"|".join(re.escape(t.encode()) for t in self.tokens))
                       if self.tokens else None)

    def defuse(self, text: str) -> str:
        """``text`` with a word joiner after the first character of each control token."""
        if self._text is None:
            return text
        return self._text.sub(lambda m: m[0][0] + WORD_JOINER + m[0][1:], text)

    def defuse_body(self, body: bytes) -> bytes | None:
        """A JSON request body with every control token in its ``CHAT_FIELDS`` defused, or
        None when there is nothing to change (most bodies are decided without parsing them).
        Bodies that are not a JSON object are left to vLLM's own validation (None)."""
        if self._bytes is None:
            return None
        # A control token can only hide behind a JSON escape (``\\u003c|im_end|>``).
        if b"\\u" not in body and self._bytes.search(body) is None:
            return None
        try:
            request = json.loads(body)
        except (ValueError, RecursionError):
            return None
        if not isinstance(request, dict):
            return None
        changed = False
        for field in CHAT_FIELDS:
            if field in request:
                defused = self._walk(request[field])
                changed = changed or defused != request[field]
                request[field] = defused
        return json.dumps(request, ensure_ascii=False).encode() if changed else None

    def _walk(self, value: Any) -> Any:
        """Every string inside ``value`` (not the keys) defused."""
        if isinstance(value, str):
            return self.defuse(value)
        if isinstance(value, list):
            return [self._walk(item) for item in value]
        if isinstance(value, dict):
            return {key: self._walk(item) for key, item in value.items()}
        return value
