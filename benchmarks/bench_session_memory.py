"""Memory per session and per object: where a live session's bytes go (issue 24: 50 sessions took 1.3 GB).

Runs the shipped ``compact`` predictor in this process on the load test's volume (``loadtests.volume``:
64x192x192, the blobs annotators segment), opens ``--sessions`` sessions and annotates ``--objects`` objects
in each like a load-test annotator (a box, then ``--clicks`` ``both`` clicks near the object's centre), then
reports, per session:

- every part of ``SessionState``: the normalised image, the zoom-out embedding, the cached window / ROI
  embeddings, the geodesic click cache, and per object its logits, corrector hidden state and undo stack;
- what ``Predictor.trim_idle`` (what the reaper runs on a session idle for ``Settings.idle_trim_s``) frees;
- the process's RSS growth per session (psutil), next to the bytes the states account for.

    python -m benchmarks.bench_session_memory --sessions 10 --objects 3 --clicks 6 \\
        --out benchmarks/results/session_memory.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from app.models.build import build_predictor
from app.models.state import SessionState, _embedding_nbytes
from app.sessions.memory import release_free_memory
from loadtests.volume import synthetic_workload


def tensor_bytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.element_size() * t.nelement()


def breakdown(state: SessionState) -> dict[str, Any]:
    """Bytes of each part of one session's state."""
    windows = {k: _embedding_nbytes(e) for k, e in state.window_cache.items()}
    objects = {}
    for oid, obj in state.objects.items():
        objects[str(oid)] = {
            "logits": tensor_bytes(obj.logits), "logits_dtype": str(obj.logits.dtype) if obj.logits is not None else None,
            "roi_voxels": int(obj.logits.nelement()) if obj.logits is not None else 0,
            "hidden": tensor_bytes(obj.hidden),
            "undo_entries": len(obj.undo_stack), "undo_stack": sum(e.nbytes for e in obj.undo_stack),
            "total": obj.nbytes,
        }
    return {
        "image": tensor_bytes(state.image),
        "zoom_out_embedding": _embedding_nbytes(state.zoom_out_embedding),
        "window_cache": sum(windows.values()), "window_cache_entries": len(windows),
        "roi_embeddings": sum(v for k, v in windows.items() if k and k[0] == "roi"),
        "geodesic_cache": sum(c.nbytes + d.nbytes for c, d in state.geodesic_cache.values()),
        "geodesic_cache_entries": len(state.geodesic_cache),
        "objects": objects,
        "objects_total": sum(o["total"] for o in objects.values()),
        "total": state.nbytes,
    }


def annotate(predictor: Any, state: SessionState, blobs: list[Any], n_objects: int, n_clicks: int,
             rng: np.random.Generator) -> None:
    for oid, blob in enumerate(blobs[:n_objects], start=1):
        predictor.add_box(state, oid, list(blob.bbox))
        zs, ys, xs = np.nonzero(blob.truth)
        for _ in range(n_clicks):
            i = int(rng.integers(len(zs)))
            predictor.add_clicks(state, oid, [[int(zs[i]), int(ys[i]), int(xs[i])]], [1], mode="both")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_session_memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--objects", type=int, default=3)
    p.add_argument("--clicks", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/session_memory.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    workload = synthetic_workload()
    predictor = build_predictor("compact")
    proc = psutil.Process()
    rng = np.random.default_rng(0)
    # One session first, thrown away: the allocator's first arenas and torch's one-off buffers.
    warm = predictor.init_state(workload.volume, workload.spacing_zyx)
    annotate(predictor, warm, workload.blobs, 1, 1, rng)
    del warm
    gc.collect()
    release_free_memory()
    rss_base = proc.memory_info().rss
    states, parts, rss = [], [], []
    for _ in range(args.sessions):
        state = predictor.init_state(workload.volume, workload.spacing_zyx)
        annotate(predictor, state, workload.blobs, args.objects, args.clicks, rng)
        states.append(state)
        parts.append(breakdown(state))
        rss.append(proc.memory_info().rss - rss_base)
    before_trim = [s.nbytes for s in states]
    trimmed = [predictor.trim_idle(s) for s in states]
    gc.collect()
    release_free_memory()
    rss_after_trim = proc.memory_info().rss - rss_base
    per_session = statistics.mean(before_trim)
    per_object = statistics.mean(o["total"] for s in parts for o in s["objects"].values())
    result = {
        "what": "bytes per live session and per object of the compact predictor's state (benchmarks/"
                "bench_session_memory.py)",
        "command": "python -m benchmarks.bench_session_memory " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": args.threads},
        "volume": {"shape": list(workload.volume.shape), "spacing_zyx": list(workload.spacing_zyx)},
        "sessions": args.sessions, "objects_per_session": args.objects, "clicks_per_object": args.clicks,
        "state_bytes_per_session_mean": per_session,
        "state_bytes_per_object_mean": per_object,
        "rss_growth_per_session_bytes": rss[-1] / len(rss),
        "rss_growth_after_each_session": rss,
        "trim_idle_freed_bytes_per_session_mean": statistics.mean(trimmed),
        "state_bytes_per_session_after_trim_mean": statistics.mean(s.nbytes for s in states),
        "rss_growth_per_session_after_trim_bytes": rss_after_trim / len(states),
        "parts_mean": {k: statistics.mean(s[k] for s in parts) for k in parts[0] if isinstance(parts[0][k], int)},
        "sessions_detail": parts,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    mb = 1 / 2**20
    print(f"state per session {per_session * mb:.1f} MB (per object {per_object * mb:.2f} MB); RSS growth per "
          f"session {result['rss_growth_per_session_bytes'] * mb:.1f} MB; trim_idle frees "
          f"{result['trim_idle_freed_bytes_per_session_mean'] * mb:.1f} MB per session")
    for k, v in result["parts_mean"].items():
        print(f"  {k:<24} {v * mb if 'entries' not in k else v:10.2f}{'' if 'entries' in k else ' MB'}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
