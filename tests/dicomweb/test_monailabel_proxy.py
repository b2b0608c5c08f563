"""The shipped same-origin proxy (deploy/nginx/monailabel-proxy.conf) with a real nginx and a real server
that has API keys: the viewer's calls pass through it without a key, the service itself still refuses them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk

from app.config import hash_api_key
from tests.e2e.conftest import Server, start_server, stop_server
from tests.e2e.nginx_router import nginx_binary

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "deploy" / "nginx" / "monailabel-proxy.conf"
KEY = "proxy-test-key"
USER, PASSWORD = "reader", "secret"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("proxied"), "--no-warmup", "--monailabel",
                          "--api-key-hash", hash_api_key(KEY))
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def proxy(service: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    nginx = nginx_binary()
    if nginx is None:
        pytest.skip("nginx is not installed (Debian package 'nginx')")
    root = tmp_path_factory.mktemp("nginx")
    (root / "segsvc").mkdir()
    (root / "segsvc" / "api-key.conf").write_text(f'proxy_set_header X-API-Key "{KEY}";\n')
    (root / "segsvc" / "htpasswd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
    (root / "ohif").mkdir()
    (root / "ohif" / "index.html").write_text("<html>OHIF</html>")
    port = _free_port()
    app_port = service.url.rsplit(":", 1)[1]
    conf = CONF.read_text()
    for old, new in (("server app:8000;", f"server 127.0.0.1:{app_port};"),
                     ("server orthanc:8042;", f"server 127.0.0.1:{_free_port()};"),
                     ("listen 8081;", f"listen 127.0.0.1:{port};"),
                     ("/etc/nginx/segsvc/", f"{root}/segsvc/"), ("/usr/share/nginx/ohif", f"{root}/ohif")):
        assert old in conf, old
        conf = conf.replace(old, new)
    (root / "site.conf").write_text(conf)
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the private temp dir
    (root / "nginx.conf").write_text(
        f"{user}worker_processes 1;\npid {root}/nginx.pid;\nerror_log {root}/error.log;\n"
        "events { worker_connections 64; }\n"
        f"http {{ access_log {root}/access.log; client_body_temp_path {root}/body; proxy_temp_path {root}/proxy;\n"
        f"fastcgi_temp_path {root}/fcgi; uwsgi_temp_path {root}/uwsgi; scgi_temp_path {root}/scgi;\n"
        f"include {root}/site.conf; }}\n")
    check = subprocess.run([nginx, "-t", "-c", str(root / "nginx.conf")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen([nginx, "-c", str(root / "nginx.conf"), "-g", "daemon off;"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError((root / "error.log").read_text()) from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_proxy_adds_the_key_for_logged_in_viewers(service: Server, proxy: str, tmp_path: Path) -> None:
    auth = (USER, PASSWORD)
    assert httpx.get(f"{service.url}/info/").status_code == 401  # the service itself wants the key
    assert httpx.get(f"{proxy}/monai/info/").status_code == 401  # the proxy wants its login
    info = httpx.get(f"{proxy}/monai/info/", auth=auth)
    assert info.status_code == 200 and info.json()["labels"][0] == "background"
    assert "OHIF" in httpx.get(f"{proxy}/viewer/some/route", auth=auth).text  # OHIF's own routes
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 10, (12, 20, 24)).astype(np.float32))
    path = tmp_path / "volume.nrrd"
    sitk.WriteImage(image, str(path))
    r = httpx.put(f"{proxy}/monai/session/", files=[("files", ("volume.nrrd", path.read_bytes()))], auth=auth,
                  timeout=120)
    assert r.status_code == 200, r.text
    params = {"foreground": [[20, 10, 6]], "background": [], "label": "object"}
    r = httpx.post(f"{proxy}/monai/infer/segvol_deepgrow", params={"session_id": r.json()["session_id"],
                   "output": "json"}, data={"params": json.dumps(params)}, auth=auth, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["segsvc"]["tracks"][0]["action"] == "created"
