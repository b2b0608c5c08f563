"""Encode / decode cost of the compact backbone for one window (random weights: cost does not depend on them).

Times, per thread count, the median of ``--runs`` calls (after warm-up) of:
    * encode             one (1, 1, 32, 128, 128) window -> the cached multi-scale embedding,
    * decode_box         the box alone (the first prompt of an object),
    * decode_refine      box + 4 clicks (+ 1 padding point) + the previous mask (a ``decoder`` click),
    * prompt_maps        the rasterisation part of decode_refine alone.
Both wall-clock and process CPU time are recorded: on a shared machine the wall clock is inflated by other
processes (and multi-threaded runs suffer most), while CPU time is closer to what a quiet machine shows.

    python -m benchmarks.bench_compact_blocks --threads 2 1 --runs 20 --out benchmarks/results/compact_blocks.json

Budgets (issue: compact backbone): encode of one window well under 0.3 s and decode well under 0.15 s with one
thread; the cached embedding of one window at most ~8 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import monai
import torch

from app.models import build_backbone, get_model_config
from app.models.compact import CompactBackbone

NOTE = (
    "Measured on a shared machine (2 CPU cores, other jobs running: see loadavg). Wall-clock medians are "
    "noisy and inflated, most of all with 2 threads, where an OpenMP thread descheduled by another process "
    "stalls every parallel region; cpu_ms (process CPU time) is the steadier number. Re-run on a quiet "
    "machine for release figures."
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _measure(fn: Callable[[], object], runs: int, warmup: int) -> dict[str, object]:
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(runs):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - w) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    s = sorted(wall)
    return {
        "median_ms": round(statistics.median(wall), 2),
        "min_ms": round(s[0], 2),
        "p90_ms": round(s[min(len(s) - 1, int(0.9 * len(s)))], 2),
        "median_cpu_ms": round(statistics.median(cpu), 2),
        "n": runs,
        "samples_ms": [round(v, 2) for v in wall],
    }


def _prompts(model: CompactBackbone) -> dict[str, torch.Tensor]:
    """A box, four clicks and one padding point, and a previous mask, all inside the frame."""
    d, h, w = model.frame
    gen = torch.Generator().manual_seed(1)
    mask = torch.full((1, 1, d, h, w), -6.0)
    mask[..., d // 4 : 3 * d // 4, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 6.0
    return {
        "boxes": torch.tensor([[d / 4, h / 4, w / 4, 3 * d / 4 - 1, 3 * h / 4 - 1, 3 * w / 4 - 1]]),
        "points": torch.rand(1, 5, 3, generator=gen) * torch.tensor([d - 1, h - 1, w - 1]),
        "point_labels": torch.tensor([[1, 0, 1, 0, -1]]),
        "mask_logits": mask + 0.5 * torch.randn(1, 1, d, h, w, generator=gen),
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="compact")
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/compact_blocks.json"))
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    cfg = get_model_config(args.config)
    model = build_backbone(cfg).eval()
    if not isinstance(model, CompactBackbone):
        raise SystemExit(f"config: {args.config!r} is not a compact backbone")
    image = torch.rand(1, 1, *model.frame, generator=torch.Generator().manual_seed(0))
    prompts = _prompts(model)
    load_before = os.getloadavg()

    results = []
    with torch.inference_mode():
        embedding = model.encode(image)
        for threads in args.threads:
            torch.set_num_threads(threads)
            ops = {
                "encode": lambda: model.encode(image),
                "decode_box": lambda: model.decode(embedding, boxes=prompts["boxes"]),
                "decode_refine": lambda: model.decode(embedding, **prompts),
                "prompt_maps": lambda: model.prompt_maps(1, image.device, **prompts),
            }
            row: dict[str, object] = {"threads": threads}
            for name, fn in ops.items():
                row[name] = _measure(fn, args.runs, args.warmup)
                print(f"threads={threads} {name:14s} {row[name]}", file=sys.stderr)
            results.append(row)

    command = "python -m benchmarks.bench_compact_blocks " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    report: dict[str, object] = {
        "benchmark": "compact backbone, one window: encode and decode",
        "command": command.strip(),
        "note": NOTE,
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "host": {
            "cpu": _cpu_model(),
            "logical_cpus": os.cpu_count(),
            "loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "monai": monai.__version__,
        },
        "config": cfg.name,
        "backbone_kwargs": cfg.backbone_kwargs,
        "parameters": sum(p.numel() for p in model.parameters()),
        "embedding_bytes_per_window": model.embedding_bytes(1),
        "embedding_shapes": [list(t.shape) for t in embedding],
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(command.strip())
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
