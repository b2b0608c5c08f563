"""The viewer's JavaScript unit tests (coordinate mapping, diff-frame decoder, mask mirror) under ``node --test``.

They read frames made by the server's encoder from ``viewer/test/fixtures``; the first test checks that those
committed files are still what the encoder makes (``python -m tests.viewer.frame_fixtures`` rewrites them).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.viewer.frame_fixtures import FIXTURE_DIR, fixture_files

VIEWER_TEST_DIR = FIXTURE_DIR.parent


def test_committed_fixtures_match_the_encoder() -> None:
    files = fixture_files()
    committed = {p.name: p.read_bytes() for p in FIXTURE_DIR.iterdir()}
    assert sorted(committed) == sorted(files)
    stale = [name for name, data in files.items() if committed[name] != data]
    assert not stale, f"stale fixtures {stale}: run python -m tests.viewer.frame_fixtures"


def test_node_unit_tests_pass() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (Debian package 'nodejs'): the viewer's JS unit tests need it")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 18:
        pytest.skip(f"node {version} is older than 18 (node --test and DecompressionStream)")
    # No node_modules needed: the tested modules import nothing outside viewer/src.
    result = subprocess.run([node, "--test", str(VIEWER_TEST_DIR) + "/"], cwd=VIEWER_TEST_DIR.parent,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout and "# pass 0" not in result.stdout
