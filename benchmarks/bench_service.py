"""End-to-end cost of the service over loopback: click round trips, diff frame sizes, device memory.

Starts ``python -m app`` (compact config with the shipped weights by default, ``--weights none`` for random ones:
the zoom-in ROI and the masks depend on what the model predicts), uploads a
synthetic CT-like 128x256x256 (D, H, W) volume, draws one organ-sized box, then sends ``gru`` clicks and measures:

    http_rtt_ms   POST .../clicks (mode "gru") sent -> HTTP reply received
    ws_rtt_ms     POST .../clicks (mode "gru") sent -> the click's GRU diff frame received on the WebSocket
    frame bytes   each click's diff frame vs the whole mask compressed (npz download, and a snapshot frame)
    both clicks   mode "both": click sent -> GRU frame received, vs -> HTTP reply (after the decoder step)
    device bytes  session state after the upload (per session); what the first box adds (its object plus
                  the zoom-in window embeddings the session caches); what a second object over the same
                  region adds (the per-object cost); from the server's ``segsvc_session_device_bytes`` gauge

    python -m benchmarks.bench_service --threads 2 --clicks 30 --out benchmarks/results/service.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from websockets.sync.client import connect

from app.schemas.frames import decode_diff
from benchmarks.plots import latency_plot

SHAPE = (128, 256, 256)
BOX = [40, 90, 100, 79, 159, 169]  # inclusive, a 40x70x70 organ-sized box
REPO_ROOT = Path(__file__).resolve().parents[1]


def synthetic_ct(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    """int16 HU-like volume: air, an elliptic body, a brighter ellipsoidal organ inside ``BOX``, noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    vol = np.full(shape, -1000.0, dtype=np.float32)
    vol[(y / 0.8) ** 2 + (x / 0.9) ** 2 < 1] = 40.0
    cz, cy, cx = [(BOX[i] + BOX[i + 3]) / 2 for i in range(3)]
    rz, ry, rx = [(BOX[i + 3] - BOX[i]) / 2 for i in range(3)]
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    vol[((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = 180.0
    vol += rng.normal(0, 15, shape).astype(np.float32)
    return vol.astype(np.int16)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(cmd: list[str], env: dict[str, str], url: str) -> Iterator[None]:
    """Run the server command ``cmd`` until the block ends, entering it once ``url``/readyz answers 200."""
    server = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env)
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.5)
        yield
    finally:
        server.terminate()
        server.wait(timeout=30)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _device_bytes(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("segsvc_session_device_bytes "):
            return float(line.split()[1])
    raise RuntimeError("segsvc_session_device_bytes missing from /metrics")


class FrameRecorder:
    """Receives every stream message in a thread, recording (arrival time, frame) of binary frames."""

    def __init__(self, ws_url: str, token: str) -> None:
        self._connection = connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"}, max_size=None)
        self._ws = self._connection.__enter__()
        self.hello = json.loads(self._ws.recv(timeout=30))
        self.frames: list[tuple[float, int, object]] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for message in self._ws:
                now = time.perf_counter()
                if isinstance(message, bytes):
                    with self._cond:
                        self.frames.append((now, len(message), decode_diff(message)))
                        self._cond.notify_all()
        except Exception:  # closed
            pass

    def wait_for(self, object_id: int, version: int, timeout: float = 600.0) -> tuple[float, int, object]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for entry in self.frames:
                    frame = entry[2]
                    if frame.object_id == object_id and frame.version == version:  # type: ignore[attr-defined]
                        return entry
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no frame for object {object_id} version {version}")
                self._cond.wait(left)

    def send(self, text: str) -> None:
        self._ws.send(text)

    def close(self) -> None:
        self._connection.__exit__(None, None, None)
        self._thread.join(timeout=5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="compact")
    p.add_argument("--threads", type=int, default=2, help="OMP/torch threads of the server process")
    p.add_argument("--clicks", type=int, default=30, help="timed gru clicks (after 2 untimed)")
    p.add_argument("--both-clicks", type=int, default=3, help='timed clicks in mode "both"')
    p.add_argument("--device", default="cpu")
    p.add_argument("--weights", default="default", help='"default" (shipped weights), a path, or "none" (random)')
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "service.json")
    args = p.parse_args()

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("SEGSVC_")}
    env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    weights = ["--random-weights"] if args.weights == "none" else ["--weights", args.weights]
    cmd = [sys.executable, "-m", "app", "--port", str(port), "--config", args.config, *weights,
           "--device", args.device, "--log-level", "warning"]
    with serving(cmd, env, url):
        results = run(url, args)
    results["command"] = "python -m benchmarks.bench_service " + " ".join(sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    samples = results.get("samples", {})
    if isinstance(samples, dict):
        latency_plot({k: v for k, v in samples.items() if k.endswith("_ms")}, args.out.with_suffix(".png"),
                     f"service round trips over loopback, {args.config}")
    print(json.dumps({k: v for k, v in results.items() if k != "samples"}, indent=2))


def run(url: str, args: argparse.Namespace) -> dict[str, object]:
    client = httpx.Client(base_url=url, timeout=600)
    volume = synthetic_ct()
    buf = io.BytesIO()
    np.savez_compressed(buf, imgs=volume, spacing=np.array([1.5, 0.8, 0.8]))
    base_bytes = _device_bytes(url)
    t0 = time.perf_counter()
    r = client.post("/v1/sessions", files={"file": ("ct.npz", buf.getvalue())},
                    data={"spacing_order": "zyx", "modality": "CT"})
    r.raise_for_status()
    upload_ms = (time.perf_counter() - t0) * 1e3
    sid, token = r.json()["session_id"], r.json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    session_bytes = _device_bytes(url) - base_bytes
    stream = FrameRecorder(url.replace("http://", "ws://") + f"/v1/sessions/{sid}/stream", token)

    t0 = time.perf_counter()
    box = client.post(f"/v1/sessions/{sid}/objects/1/box", json={"box": BOX}, headers=auth).json()
    box_ms = (time.perf_counter() - t0) * 1e3
    box_frame = stream.wait_for(1, box["version"])
    after_box_bytes = _device_bytes(url) - base_bytes

    rng = np.random.default_rng(1)
    http_ms: list[float] = []
    ws_ms: list[float] = []
    frame_bytes: list[int] = []
    changed: list[int] = []
    server_ms: list[float] = []
    for i in range(args.clicks + 2):
        point = [int(rng.integers(BOX[a], BOX[a + 3] + 1)) for a in range(3)]
        label = int(i % 3 != 2)
        t0 = time.perf_counter()
        reply = client.post(f"/v1/sessions/{sid}/objects/1/clicks",
                            json={"points": [point], "labels": [label], "mode": "gru"}, headers=auth)
        t_http = time.perf_counter()
        reply.raise_for_status()
        body = reply.json()
        t_frame, nbytes, _ = stream.wait_for(1, body["version"])
        if i < 2:
            continue  # untimed warm clicks
        http_ms.append((t_http - t0) * 1e3)
        ws_ms.append((t_frame - t0) * 1e3)
        frame_bytes.append(nbytes)
        changed.append(body["changed"])
        server_ms.append(body["timings_ms"].get("total", float("nan")))
    after_clicks_bytes = _device_bytes(url) - base_bytes

    # Mode "both": the GRU frame is streamed while the decoder step still runs.
    both_gru_ms: list[float] = []
    both_http_ms: list[float] = []
    for _ in range(args.both_clicks):
        point = [int(rng.integers(BOX[a], BOX[a + 3] + 1)) for a in range(3)]
        t0 = time.perf_counter()
        reply = client.post(f"/v1/sessions/{sid}/objects/1/clicks",
                            json={"points": [point], "labels": [1], "mode": "both"}, headers=auth)
        t_http = time.perf_counter()
        reply.raise_for_status()
        gru_version = reply.json()["steps"][0]["version"]
        t_gru, _, _ = stream.wait_for(1, gru_version)
        both_gru_ms.append((t_gru - t0) * 1e3)
        both_http_ms.append((t_http - t0) * 1e3)

    # A second object over the same region: the zoom-in window embeddings are already cached by the session,
    # so this delta is what one more object costs.
    before_second = _device_bytes(url)
    t0 = time.perf_counter()
    client.post(f"/v1/sessions/{sid}/objects/2/box", json={"box": BOX}, headers=auth).raise_for_status()
    second_box_ms = (time.perf_counter() - t0) * 1e3
    second_object_bytes = _device_bytes(url) - before_second

    mask_npz = client.get(f"/v1/sessions/{sid}/objects/1/mask", params={"format": "npz"}, headers=auth)
    mask = np.load(io.BytesIO(mask_npz.content))["mask"]
    n_frames = len(stream.frames)
    stream.send(json.dumps({"type": "resync", "object_id": 1}))
    deadline = time.monotonic() + 60
    while len(stream.frames) <= n_frames and time.monotonic() < deadline:
        time.sleep(0.01)
    snapshot_bytes = stream.frames[n_frames][1] if len(stream.frames) > n_frames else None
    stream.close()
    client.delete(f"/v1/sessions/{sid}", headers=auth)

    whole_npz = len(mask_npz.content)
    whole_zlib = len(zlib.compress(np.packbits(mask).tobytes(), 6))
    median_frame = statistics.median(frame_bytes)
    return {
        "what": f"service over loopback; {args.config} config, weights {args.weights!r}",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "server_threads": args.threads,
                    "python": platform.python_version(), "device": args.device},
        "volume_shape_dhw": list(SHAPE),
        "box": BOX,
        "upload_ms": round(upload_ms, 1),
        "box_ms": round(box_ms, 1),
        "box_frame_bytes": box_frame[1],
        "gru_clicks_timed": len(http_ms),
        "gru_click_http_rtt_ms": {"p50": round(_percentile(http_ms, 50), 2), "p95": round(_percentile(http_ms, 95), 2)},
        "gru_click_ws_rtt_ms": {"p50": round(_percentile(ws_ms, 50), 2), "p95": round(_percentile(ws_ms, 95), 2)},
        "gru_click_server_total_ms": {"p50": round(_percentile(server_ms, 50), 2),
                                      "p95": round(_percentile(server_ms, 95), 2)},
        "gru_click_changed_voxels_median": statistics.median(changed),
        "gru_diff_frame_bytes": {"median": median_frame, "max": max(frame_bytes)},
        "whole_mask_bytes": {"voxels": int(mask.size), "foreground": int(mask.sum()), "npz_download": whole_npz,
                             "zlib_packbits": whole_zlib, "snapshot_frame": snapshot_bytes},
        "diff_vs_whole_mask_percent": {
            "vs_npz": round(100 * median_frame / whole_npz, 3),
            "vs_zlib_packbits": round(100 * median_frame / whole_zlib, 3),
            "vs_snapshot_frame": round(100 * median_frame / snapshot_bytes, 3) if snapshot_bytes else None,
        },
        "gru_click_service_overhead_ms_p50": round(_percentile(http_ms, 50) - _percentile(server_ms, 50), 2),
        "both_click_ms": {
            "gru_frame_p50": round(_percentile(both_gru_ms, 50), 1) if both_gru_ms else None,
            "http_reply_p50": round(_percentile(both_http_ms, 50), 1) if both_http_ms else None,
            "n": len(both_gru_ms),
        },
        "second_object_box_ms": round(second_box_ms, 1),
        "device_bytes": {
            "per_session_after_upload": int(session_bytes),
            "first_object_box_incl_window_cache": int(after_box_bytes - session_bytes),
            f"first_object_after_{args.clicks + 2}_gru_clicks_incl_window_cache": int(after_clicks_bytes - session_bytes),
            "second_object_box_same_region": int(second_object_bytes),
        },
        "samples": {"http_rtt_ms": [round(v, 2) for v in http_ms], "ws_rtt_ms": [round(v, 2) for v in ws_ms],
                    "frame_bytes": frame_bytes, "changed": changed},
    }


if __name__ == "__main__":
    main()
