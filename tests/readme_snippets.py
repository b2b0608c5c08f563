"""The README's newcomer commands and SDK snippet, read from README.md itself so that checks cannot drift.

Used by ``tests/e2e/test_readme.py`` and by ``.ci/readme_install_check.sh``, which runs this file in a fresh
virtual environment (standard library only):

    python3 tests/readme_snippets.py install|serve|sample|sdk [BASE_URL]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
README_URL = "http://127.0.0.1:8000"
"""The server address the SDK snippet uses: the README server's default host and port."""

_FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _block(text: str, after: str, lang: str) -> str:
    """The first ``lang`` code block after the line containing ``after``."""
    start = text.find(after)
    if start < 0:
        raise LookupError(f"README.md: no text {after!r}")
    for match in _FENCE.finditer(text, start):
        if match.group(1) == lang:
            return match.group(2)
    raise LookupError(f"README.md: no {lang} block after {after!r}")


def _one_command(block: str, where: str) -> str:
    lines = [line for line in block.splitlines() if line.strip()]
    if len(lines) != 1:
        raise LookupError(f"README.md: expected one command {where}, got {lines}")
    return lines[0].strip()


def install_and_serve(text: str) -> tuple[str, str]:
    """The newcomer's first command split at its ``&&``: (the install command, the server command)."""
    command = _one_command(_block(text, "Install and run the server", "bash"), "to install and run the server")
    install, sep, serve = command.partition(" && ")
    if not sep:
        raise LookupError(f"README.md: expected 'install && serve', got {command!r}")
    return install.strip(), serve.strip()


def sample_command(text: str) -> str:
    """The command that writes the sample volume the SDK snippet uploads."""
    return _one_command(_block(text, "## Using it", "bash"), "to make the sample volume")


def sdk_snippet(text: str) -> str:
    """The SDK snippet, exactly as the README shows it."""
    return _block(text, "## Using it", "python")


def sdk_snippet_for(text: str, base_url: str) -> str:
    """The SDK snippet pointed at ``base_url`` instead of the README's default address (nothing else changes)."""
    snippet = sdk_snippet(text)
    if snippet.count(README_URL) != 1:
        raise LookupError(f"README.md: the SDK snippet should name {README_URL} once")
    return snippet.replace(README_URL, base_url)


def main(argv: list[str]) -> int:
    """Print one part: ``install``, ``serve``, ``sample`` or ``sdk [BASE_URL]`` (the snippet pointed there)."""
    text = README.read_text(encoding="utf-8")
    parts = {
        "install": lambda: install_and_serve(text)[0],
        "serve": lambda: install_and_serve(text)[1],
        "sample": lambda: sample_command(text),
        "sdk": lambda: sdk_snippet_for(text, argv[1]) if len(argv) == 2 else sdk_snippet(text),
    }
    if not argv or argv[0] not in parts or len(argv) > (2 if argv[0] == "sdk" else 1):
        print(f"usage: python3 {Path(__file__).name} install|serve|sample|sdk [BASE_URL]", file=sys.stderr)
        return 2
    print(parts[argv[0]](), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
