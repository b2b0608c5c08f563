"""nginx as the router of the replicas tests: ``deploy/nginx/segsvc.conf`` rendered for local processes.

The routing logic stays in the one shipped file; rendering only swaps its upstream addresses and its
``listen`` port, and wraps it in a main configuration that a non-root user can run in the foreground
(pid file, logs and temporary paths under the test's folder).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "deploy" / "nginx" / "segsvc.conf"
UPSTREAMS = ("app:8000", "app2:8000")  # the shipped upstream servers, in order
# Each request's upstream(s): "a.b.c.d:p, e.f.g.h:q" when nginx tried more than one.
_LOG_FORMAT = "log_format segsvc '$request_method $uri $status \"$upstream_addr\" $upstream_status';"


def nginx_binary() -> str | None:
    """The nginx binary (Debian installs it in /usr/sbin, which a non-root PATH may lack)."""
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).is_file()), None)


def render(template: str, upstreams: dict[str, str], listen: str) -> str:
    """``template`` with each shipped upstream address replaced and its ``listen`` set to ``listen``."""
    out = template
    for old, new in upstreams.items():
        pattern = rf"(?m)^(\s*server\s+){re.escape(old)}(\s|;)"
        out, n = re.subn(pattern, rf"\g<1>{new}\g<2>", out)
        if n != 1:
            raise ValueError(f"upstream {old}: expected once in the template, found {n} times")
    out, n = re.subn(r"(?m)^(\s*listen\s+)\S+;", rf"\g<1>{listen};", out)
    if n != 1:
        raise ValueError(f"listen: expected once in the template, found {n} times")
    return out


@dataclass
class Nginx:
    url: str
    process: subprocess.Popen[bytes]
    prefix: Path

    def access_log(self) -> list[str]:
        return (self.prefix / "access.log").read_text(errors="replace").splitlines()

    def error_log(self) -> str:
        return (self.prefix / "error.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # nginx: SIGTERM = fast shutdown
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_nginx(prefix: Path, replicas: list[str]) -> Nginx:
    """Run nginx in the foreground on a free port, routing to ``replicas`` ("host:port", in the order of
    the shipped upstreams)."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed")
    prefix.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    site = render(TEMPLATE.read_text(), dict(zip(UPSTREAMS, replicas, strict=True)), f"127.0.0.1:{port}")
    (prefix / "segsvc.conf").write_text(site)
    temp = {name: prefix / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(exist_ok=True)
    # Started by root (CI containers), nginx would run its worker as nobody, which cannot enter pytest's
    # private temporary folders: keep the worker as the user who runs the tests.
    user = "user root root;" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(f"""
daemon off;
{user}
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} info;
events {{ worker_connections 256; }}
http {{
    {_LOG_FORMAT}
    access_log {prefix / "access.log"} segsvc;
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {prefix / "segsvc.conf"};
}}
""")
    test = subprocess.run([binary, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e",
                           str(prefix / "error.log")], capture_output=True, text=True, timeout=30)
    if test.returncode != 0:
        raise RuntimeError(f"nginx refuses the rendered configuration:\n{test.stderr}")
    process = subprocess.Popen([binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e",
                                str(prefix / "error.log")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    nginx = Nginx(f"http://127.0.0.1:{port}", process, prefix)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return nginx
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                nginx.stop()
                raise RuntimeError(f"nginx did not start:\n{nginx.error_log()}") from None
            time.sleep(0.05)
