"""The Kubernetes manifests (``deploy/kustomization.yaml``, ``deploy/k8s/*.yaml``) parse and wire the replicas:
no cluster runs here, so the checks read the documents and compare them with the nginx routing file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NGINX_CONF = DEPLOY / "nginx" / "segsvc.conf"


def _documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: found {len(found)}"
    return found[0]


def test_kustomization_lists_every_manifest_and_ships_the_nginx_file_as_config() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(f"k8s/{p.name}" for p in (DEPLOY / "k8s").glob("*.yaml"))
    (generator,) = kustomization["configMapGenerator"]
    assert generator["name"] == "segsvc-nginx"
    assert generator["files"] == ["default.conf=nginx/segsvc.conf"]  # the same file compose mounts


def test_replicas_statefulset_has_stable_ids_redis_and_shared_storage() -> None:
    sts = _one("StatefulSet", "segsvc")
    assert sts["spec"]["replicas"] >= 2
    assert sts["spec"]["serviceName"] == "segsvc-replicas"
    assert _one("Service", "segsvc-replicas")["spec"]["clusterIP"] == "None"
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["SEGSVC_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"  # stable: segsvc-N
    assert env["REDIS_URL"]["value"] == "redis://redis:6379/0"
    assert env["SEGSVC_TRUST_SESSION_ID_HEADER"]["value"] == "true"
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == env["SEGSVC_STORAGE_DIR"]["value"])
    claim = next(v for v in pod["volumes"] if v["name"] == mount["name"])["persistentVolumeClaim"]["claimName"]
    assert _one("PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "--host" in container["args"] and "0.0.0.0" in container["args"]
    redis = _one("StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]
    assert redis["args"][redis["args"].index("--appendonly") + 1] == "yes"
    assert _one("Service", "redis")["spec"]["ports"][0]["port"] == 6379


def test_every_nginx_upstream_is_a_service_of_exactly_one_replica_pod() -> None:
    sts = _one("StatefulSet", "segsvc")
    pods = {f"segsvc-{i}" for i in range(sts["spec"]["replicas"])}
    upstreams = re.findall(r"(?m)^\s*server\s+([\w.-]+):(\d+)", NGINX_CONF.read_text())
    assert len(upstreams) == len(pods)
    selected = set()
    for name, port in upstreams:
        service = _one("Service", name)
        selector = service["spec"]["selector"]
        assert selector["app.kubernetes.io/name"] == sts["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        selected.add(selector["statefulset.kubernetes.io/pod-name"])
        assert service["spec"]["ports"][0]["port"] == int(port)
    assert selected == pods  # one upstream per replica, none twice


def test_router_mounts_the_generated_config_and_is_the_entry_service() -> None:
    deployment = _one("Deployment", "segsvc-router")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith("nginx:")
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/nginx/conf.d")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "segsvc-nginx"
    listen = re.search(r"(?m)^\s*listen\s+(\d+);", NGINX_CONF.read_text())
    assert listen is not None and container["ports"][0]["containerPort"] == int(listen.group(1))
    service = _one("Service", "segsvc")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_nginx_routes_by_session_id_with_websocket_upgrade_and_fail_over() -> None:
    conf = NGINX_CONF.read_text()
    assert re.search(r"hash \$segsvc_session_key consistent;", conf)
    assert '"~^/v1/sessions/(?<segsvc_sid>[A-Za-z0-9_-]+)"  $segsvc_sid;' in conf
    assert re.search(r"proxy_next_upstream error timeout;", conf)
    assert all("max_fails=" in line and "fail_timeout=" in line
               for line in re.findall(r"(?m)^\s*server\s+[\w.-]+:\d+.*$", conf))
    stream = re.search(r"location ~ \^/v1/sessions/.*?/stream\$ \{(.*?)\n    \}", conf, re.S)
    assert stream is not None
    assert "proxy_set_header Upgrade $http_upgrade;" in stream.group(1)
    assert "proxy_set_header Connection $segsvc_connection;" in stream.group(1)
    # Both ways of creating a session (upload, DICOMweb series) are named by the router and hashed on that name.
    create = re.search(r"location ~ \^/v1/sessions\(/dicomweb\)\?\$ \{(.*?)\n    \}", conf, re.S)
    assert create is not None and "proxy_set_header X-Session-Id $request_id;" in create.group(1)
    assert re.search(r'(?m)^\s*"/v1/sessions/dicomweb"\s+\$request_id;', conf)
