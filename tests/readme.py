"""The README's commands, extracted so the tests run them as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
README_URL = "http://localhost:3000"


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def curl_commands() -> list[str]:
    return [b.strip() for b in code_blocks("bash") if b.startswith("curl ")]


def python_snippets() -> list[str]:
    return [b for b in code_blocks("python") if README_URL in b]


def pointed_at(text: str, url: str) -> str:
    """``text`` with the README's address replaced by the test server's."""
    return text.replace(README_URL, url)


def commands(prefix: str) -> list[str]:
    """The one-line commands in the README's bash blocks that start with ``prefix``, without
    their trailing ``# comment``."""
    lines = (line.strip() for block in code_blocks("bash") for line in block.splitlines())
    return [line.split("  #")[0].strip() for line in lines if line.startswith(prefix)]


def command(prefix: str) -> str:
    """The README's only command starting with ``prefix``; fails when there is not exactly one."""
    (found,) = commands(prefix)
    return found
