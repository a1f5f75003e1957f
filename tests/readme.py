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
