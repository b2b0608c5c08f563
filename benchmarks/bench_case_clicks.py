"""Click latency through the server on a real case, with the evaluation protocol's clicks.

Starts ``python -m app`` (shipped weights, server defaults unless flags are passed through ``--server-flag``),
uploads one case of the data folder (default: a 155x240x240 BRATS MR of the dev split), and per object
draws the official 2D box, then sends the official corrective clicks (``evaluation.click_rule``, from the
server's own segmentation) for five rounds in mode "both" (the service default), one request per click. Per
click it records the HTTP round trip (request sent -> reply after the decoder step) and the server's
per-stage timings of each step (``timings_ms``), and reports p50/p95/p99/max.

    python -m benchmarks.bench_case_clicks --threads 2 --out benchmarks/results/case_clicks.json
    python -m benchmarks.bench_case_clicks --server-flag=--click-region-reach=0 --out runs/no_regions.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np

from app.schemas import paths
from benchmarks.bench_service import REPO_ROOT, _free_port, serving
from benchmarks.plots import latency_plot
from evaluation.cases import find_cases, load_case
from evaluation.click_rule import next_click
from evaluation.metrics import N_ROUNDS


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"n": int(a.size), "p50": round(float(np.percentile(a, 50)), 1), "p95": round(float(np.percentile(a, 95)), 1),
            "p99": round(float(np.percentile(a, 99)), 1), "max": round(float(a.max()), 1)}


def run(url: str, args: argparse.Namespace) -> dict[str, object]:
    ref = find_cases(args.data, split=args.split, select=args.case)[0]
    case = load_case(ref)
    assert case.boxes is not None
    client = httpx.Client(base_url=url, timeout=600)
    buf = io.BytesIO()
    np.savez_compressed(buf, imgs=case.image, spacing=np.asarray(case.spacing))
    r = client.post("/v1/sessions", files={"file": ("case.npz", buf.getvalue())},
                    data={"spacing_order": "zyx", "modality": case.modality})
    r.raise_for_status()
    sid, token = r.json()["session_id"], r.json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    click_ms: list[float] = []
    box_ms: list[float] = []
    stages: dict[str, list[float]] = defaultdict(list)

    def segmentation() -> np.ndarray:
        reply = client.get(f"/v1/sessions/{sid}/segmentation", params={"format": "npz"}, headers=auth)
        reply.raise_for_status()
        return np.load(io.BytesIO(reply.content))[paths.SEGMENTATION_NPZ_KEY]

    try:
        for c in case.classes:
            b = case.boxes[c]
            t0 = time.perf_counter()
            client.post(f"/v1/sessions/{sid}/objects/{c}/box", json={"box": list(b)},
                        headers=auth).raise_for_status()
            box_ms.append((time.perf_counter() - t0) * 1e3)
        for _ in range(N_ROUNDS - 1):
            labels = segmentation()
            for c in case.classes:
                click = next_click(labels == c, case.ground_truth == c)
                if click is None:
                    continue
                t0 = time.perf_counter()
                reply = client.post(f"/v1/sessions/{sid}/objects/{c}/clicks", headers=auth,
                                    json={"points": [list(click.point)], "labels": [click.label], "mode": "both"})
                click_ms.append((time.perf_counter() - t0) * 1e3)
                reply.raise_for_status()
                for step in reply.json()["steps"]:
                    for stage, ms in step["timings_ms"].items():
                        stages[f"{step['step']}.{stage}"].append(float(ms))
    finally:
        client.delete(f"/v1/sessions/{sid}", headers=auth)
    return {
        "what": f"official clicks through the server, mode both, case {case.name} ({case.modality}, "
                f"{list(case.image.shape)}), {len(case.classes)} objects",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "server_threads": args.threads,
                    "python": platform.python_version()},
        "server_flags": args.server_flag,
        "box_http_ms": _stats(box_ms),
        "click_http_ms": _stats(click_ms),
        "over_150_ms": sum(v > 150 for v in click_ms),
        "over_300_ms": sum(v > 300 for v in click_ms),
        "server_stage_ms": {k: _stats(v) for k, v in sorted(stages.items())},
        "samples": {"click_http_ms": [round(v, 1) for v in click_ms]},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data"))
    p.add_argument("--split", default="dev")
    p.add_argument("--case", default="brats_pat0005_flair", help="case name in the data folder")
    p.add_argument("--threads", type=int, default=2, help="OMP/torch threads of the server process")
    p.add_argument("--server-flag", action="append", default=[], help="extra flag for python -m app (repeatable)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "case_clicks.json")
    args = p.parse_args()

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("SEGSVC_")}
    env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, "-m", "app", "--port", str(port), "--log-level", "warning", *args.server_flag]
    with serving(cmd, env, url):
        results = run(url, args)
    results["command"] = "python -m benchmarks.bench_case_clicks " + " ".join(sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    latency_plot({"click_http_ms": results["samples"]["click_http_ms"]},  # type: ignore[index]
                 args.out.with_suffix(".png"), "official clicks through the server (mode both)")
    print(json.dumps({k: v for k, v in results.items() if k != "samples"}, indent=2))


if __name__ == "__main__":
    main()
