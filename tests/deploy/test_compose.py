"""Container files: the compose file validates, and the image installs the project exactly as the README does.

No container engine runs in CI, so the image is never built there; what keeps it honest is that its install
step is the README's install command (checked here), which ``.ci/readme_install_check.sh`` runs in a fresh
virtual environment on every CI run, and ``docker-compose config`` validates the compose file.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib

from tests.readme_snippets import install_and_serve

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"


def _compose_command() -> list[str] | None:
    """``docker-compose`` (Debian package), else the ``docker compose`` plugin, else None."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


COMPOSE = _compose_command()
needs_compose = pytest.mark.skipif(
    COMPOSE is None,
    reason="no compose binary: install the Debian package docker-compose to validate docker-compose.yml",
)


def _compose_config(workdir: Path) -> subprocess.CompletedProcess[str]:
    assert COMPOSE is not None
    return subprocess.run([*COMPOSE, "-f", "docker-compose.yml", "config", "-q"], cwd=workdir,
                          capture_output=True, text=True, timeout=60)


@needs_compose
def test_compose_file_validates() -> None:
    result = _compose_config(REPO)
    assert result.returncode == 0, result.stderr


@needs_compose
def test_compose_validation_rejects_an_invalid_file(tmp_path: Path) -> None:
    """The check above means something: the same validator refuses an unknown service option."""
    broken = COMPOSE_FILE.read_text().replace("\n  redis:\n", "\n  redis:\n    bogus_option: 1\n", 1)
    assert "bogus_option" in broken
    (tmp_path / "docker-compose.yml").write_text(broken)
    result = _compose_config(tmp_path)
    assert result.returncode != 0
    assert "bogus_option" in result.stderr + result.stdout


def test_compose_services_wire_app_redis_and_orthanc() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    assert set(services) == {"app", "redis", "orthanc", "app2", "nginx"}

    app = services["app"]
    assert app["build"]["context"] == "."
    assert "8000:8000" in app["ports"]
    assert app["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert app["environment"]["SEGSVC_STORAGE_DIR"] == "/data"
    assert any(v.endswith(":/data") for v in app["volumes"])
    assert app["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(app["healthcheck"]["test"])
    assert "profiles" not in app

    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "profiles" not in redis

    orthanc = services["orthanc"]
    assert orthanc["image"].startswith("jodogne/orthanc-plugins")
    assert orthanc["profiles"] == ["orthanc"]
    assert "8042:8042" in orthanc["ports"]
    assert '"DicomWeb": {"Enable": true' in " ".join(orthanc["command"])


def test_compose_replicas_profile_shares_storage_and_routes_through_nginx() -> None:
    """--profile replicas: app2 is a second replica of the same image on the same Redis and storage volume,
    each replica has its own id, and nginx mounts the shipped routing file whose upstreams are the replicas."""
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    app, app2, nginx = services["app"], services["app2"], services["nginx"]
    assert app2["image"] == app["image"] and "build" not in app2
    assert app2["profiles"] == ["replicas"] and nginx["profiles"] == ["replicas"]
    for key in ("REDIS_URL", "SEGSVC_STORAGE_DIR", "SEGSVC_TRUST_SESSION_ID_HEADER"):
        assert app2["environment"][key] == app["environment"][key]
    assert {app["environment"]["SEGSVC_REPLICA_ID"], app2["environment"]["SEGSVC_REPLICA_ID"]} == {"app", "app2"}
    assert app2["volumes"] == app["volumes"]  # one storage volume: every replica reads every session's files
    assert "ports" not in app2  # reached through nginx only
    assert "8080:8080" in nginx["ports"]
    mount = next(v for v in nginx["volumes"] if v.startswith("./deploy/nginx/segsvc.conf:"))
    assert mount.split(":")[1] == "/etc/nginx/conf.d/default.conf"
    upstreams = re.findall(r"(?m)^\s*server\s+([\w.-]+):(\d+)", (REPO / "deploy/nginx/segsvc.conf").read_text())
    assert sorted(upstreams) == [("app", "8000"), ("app2", "8000")]
    assert set(nginx["depends_on"]) == {"app", "app2"}


# --- Dockerfile ------------------------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _pip_installs(shell: str) -> list[list[str]]:
    """Every ``pip install`` command of a shell snippet, split into words (``&&``/``;`` separate commands)."""
    parts = re.split(r"&&|;|\n", re.sub(r"\\\n", " ", shell))
    commands = [shlex.split(part) for part in parts if re.search(r"\bpip\b.*\binstall\b", part)]
    return [c for c in commands if "pip" in c and "install" in c]


def _ci_pip_installs() -> list[list[str]]:
    lines = [ln for ln in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
             if not ln.lstrip().startswith("#")]
    return _pip_installs("\n".join(lines))


def test_ci_installs_the_project_once_and_pins_its_extra_test_tools() -> None:
    # Test-only tools CI adds without their requirements (MONAI Label's client class, pyproject.toml's dev
    # extra says why) are not part of the image; each is pinned.
    tools = [cmd for cmd in _ci_pip_installs() if "--no-deps" in cmd]
    assert all(any("==" in word for word in cmd) for cmd in tools), f"unpinned test tools: {tools}"
    ci = [cmd for cmd in _ci_pip_installs() if "--no-deps" not in cmd]
    assert len(ci) == 1, f".ci/run should install the project once, found {ci}"


def test_dockerfile_installs_the_project_with_the_readme_command() -> None:
    """The image installs the project exactly as a new user does (``.ci/readme_install_check.sh`` proves on
    every CI run that this command, in a fresh virtual environment, serves)."""
    readme_install, _ = install_and_serve((REPO / "README.md").read_text(encoding="utf-8"))
    image = [cmd for keyword, args in _dockerfile_instructions() if keyword == "RUN" for cmd in _pip_installs(args)]
    project = [cmd for cmd in image if not any(word.startswith("torch") for word in cmd)]
    assert project == [shlex.split(readme_install)], f"the image installs the project with {project}"


def test_dockerfile_preinstalls_the_pinned_torch_from_the_variant_index() -> None:
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_pin = next(d for d in pins if re.match(r"torch\b", d))
    image = [cmd for keyword, args in _dockerfile_instructions() if keyword == "RUN" for cmd in _pip_installs(args)]
    torch = [cmd for cmd in image if any(word.startswith("torch") for word in cmd)]
    assert len(torch) == 1 and torch_pin in torch[0], f"torch install {torch} must use the pyproject pin {torch_pin}"
    assert "--index-url" in torch[0]
    args = dict(a.split("=", 1) for k, a in _dockerfile_instructions() if k == "ARG")
    assert args["TORCH_VARIANT"] == "cpu"
    assert args["TORCH_INDEX_URL"].endswith("/${TORCH_VARIANT}")
    # torch comes first, so the project install keeps that build instead of pulling PyPI's.
    assert image[0] == torch[0]


def test_dockerfile_runs_the_service_as_a_non_root_user_with_a_healthcheck() -> None:
    instructions = _dockerfile_instructions()
    by_keyword: dict[str, list[str]] = {}
    for keyword, args in instructions:
        by_keyword.setdefault(keyword, []).append(args)
    assert by_keyword["FROM"] == ["python:3.11-slim"]
    user = by_keyword["USER"][-1]
    assert user not in ("root", "0")
    assert [k for k, _ in instructions].index("USER") < [k for k, _ in instructions].index("CMD")
    assert by_keyword["EXPOSE"] == ["8000"]
    healthcheck = by_keyword["HEALTHCHECK"][-1]
    assert "urllib.request" in healthcheck and "/healthz" in healthcheck and "curl" not in healthcheck
    assert json.loads(by_keyword["CMD"][-1]) == ["python", "-m", "app", "--host", "0.0.0.0"]


def test_dockerignore_keeps_runs_and_git_out_but_the_weights_in() -> None:
    patterns = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    assert ".git" in patterns and "runs/" in patterns
    assert not any("weights" in p or p.startswith("app") or p in ("*.pt", "**/*.pt") for p in patterns)


def test_replicas_trust_x_forwarded_for_from_the_nginx_router_only() -> None:
    """The replicas trust X-Forwarded-For from nginx's fixed address (not the whole network, which the
    published port 8000 also reaches), and nginx sets the header to the peer it sees, never extending a
    client's own header."""
    import ipaddress

    import yaml

    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    router_ip = compose["services"]["nginx"]["networks"]["default"]["ipv4_address"]
    subnet = compose["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(router_ip) in ipaddress.ip_network(subnet)
    for name in ("app", "app2"):
        assert compose["services"][name]["environment"]["SEGSVC_FORWARDED_ALLOW_IPS"] == router_ip, name
    nginx = (REPO / "deploy" / "nginx" / "segsvc.conf").read_text()
    headers = re.findall(r"proxy_set_header\s+X-Forwarded-For\s+(\S+);", nginx)
    assert headers and set(headers) == {"$remote_addr"}, headers
