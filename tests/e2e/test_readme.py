"""The README's "Using it" section works as written: its server command (default model, shipped weights),
its sample-volume command, then its SDK snippet (upload, box, click, mask download, close) against that
server. Every command is read from README.md, so the README cannot drift from what is tested; only the
server's port (a free one, from ``SEGSVC_PORT``) and the snippet's address differ.

``.ci/readme_install_check.sh`` runs the same commands after a fresh install with the README's own
install command; this test covers the checkout's code on every test run.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk

from app.io.sample_volume import ORGAN_BOX, ORGAN_CENTER, SHAPE, SPACING, sample_ct
from tests.e2e.conftest import REPO_ROOT, Server, _free_port, start_server_command, stop_server
from tests.readme_snippets import README, install_and_serve, sample_command, sdk_snippet, sdk_snippet_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _as_this_python(command: str) -> list[str]:
    """The README's ``python3 ...`` command run with this interpreter (the one the checkout is installed in)."""
    argv = shlex.split(command)
    assert argv[0] == "python3", f"README command does not start with python3: {command!r}"
    return [sys.executable, *argv[1:]]


@pytest.fixture(scope="module")
def readme_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    _, serve = install_and_serve(README.read_text(encoding="utf-8"))
    port = _free_port()
    server = start_server_command(tmp_path_factory.mktemp("readme-server"), _as_this_python(serve), port,
                                  env={"SEGSVC_PORT": str(port)})
    yield server
    stop_server(server)


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH: this checkout's app/ and client/, as an install of it would provide.
    env = {"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_readme_sample_and_sdk_snippet_run_as_written(readme_server: Server, tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    sample = _run(_as_this_python(sample_command(text)), tmp_path)
    assert sample.returncode == 0, sample.stderr
    assert (tmp_path / "ct.nii.gz").is_file()

    (tmp_path / "snippet.py").write_text(sdk_snippet_for(text, readme_server.url), encoding="utf-8")
    run = _run([sys.executable, "snippet.py"], tmp_path)
    assert run.returncode == 0, f"{run.stderr}\n--- server log ---\n{readme_server.log_tail()}"

    image = sitk.ReadImage(str(tmp_path / "mask.nii.gz"))
    mask = sitk.GetArrayFromImage(image)
    assert mask.shape == SHAPE
    assert image.GetSpacing() == pytest.approx(tuple(reversed(SPACING)))  # the volume's geometry
    organ = sample_ct() > 100  # contrast-enhanced organ (160 HU) and vertebra (700 HU) stand out
    z0, y0, x0, z1, y1, x1 = ORGAN_BOX
    organ[:, y1 + 1 :, :] = False  # keep the organ, drop the vertebra behind it
    dice = 2 * np.count_nonzero(mask.astype(bool) & organ) / (np.count_nonzero(mask) + np.count_nonzero(organ))
    assert mask[ORGAN_CENTER] == 1 and dice > 0.8, f"Dice {dice:.3f} of the snippet's mask with the organ"

    # The snippet closed its session: the server holds none.
    assert httpx.get(f"{readme_server.url}/readyz", timeout=10).json()["sessions"] == 0


def test_snippet_prompts_lie_inside_the_sample_volume() -> None:
    """The snippet's box and click are the sample's organ box and centre, as the README says."""
    snippet = sdk_snippet(README.read_text(encoding="utf-8"))
    assert f"s.box(1, {list(ORGAN_BOX)})" in snippet
    assert f"s.clicks(1, [{list(ORGAN_CENTER)}], [1]" in snippet
    assert f"{list(ORGAN_BOX)}" in README.read_text(encoding="utf-8").split("```python")[0]
