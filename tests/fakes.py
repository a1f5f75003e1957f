"""Stand-ins for the service's runtime objects, for unit tests of the pieces handed them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class FakeRuntime:
    """What the forwarder reads of ``vllm_bento.runtime.Runtime``: the app to forward to
    (None: no engine), and the model's control tokens."""

    target: Any = None
    control_tokens: Any = None
