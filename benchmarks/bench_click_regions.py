"""Cost of the click regions stage (``app.models.click_regions``) on the shipped weights' 32x64x64 ROI frame.

A smooth synthetic frame image, a previous mask holding a false-positive blob, then ``apply_click_regions``
with 1 and with 5 new clicks (each searched, as in a step where that many clicks are new to the mask), timed
``--repeats`` times on one thread. The minimum is the cost on a quiet core; the median shows the machine's load.

    python -m benchmarks.bench_click_regions --repeats 50 --out benchmarks/results/click_regions.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from app.models.click_regions import RegionConfig, apply_click_regions

FRAME = (32, 64, 64)


def scene(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(image in [0, 1], previous logits): a bright object with a dimmer blob the previous mask also claims."""
    rng = np.random.default_rng(seed)
    img = gaussian_filter(rng.normal(0.3, 0.1, FRAME), 2).astype(np.float32)
    img[8:24, 16:48, 16:40] = 0.8
    img[8:24, 16:48, 40:60] = 0.5
    previous = np.where(img > 0.45, 5.0, -5.0).astype(np.float32)
    return torch.from_numpy(img), torch.from_numpy(previous)


def time_clicks(n: int, repeats: int, config: RegionConfig) -> list[float]:
    image, previous = scene()
    rng = np.random.default_rng(n)
    points = np.stack([rng.integers(9, 23, n), rng.integers(17, 47, n), rng.integers(41, 59, n)], axis=1)
    labels = np.zeros(n, dtype=np.int64)  # background clicks in the blob: every one floods it
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        apply_click_regions(previous, previous, image, points.astype(np.float64), labels, (2.0, 1.0, 1.0), config)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--reach", type=float, default=30.0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/click_regions.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    config = RegionConfig(reach=args.reach, foreground_reach=args.reach)
    result: dict[str, object] = {"command": "python -m benchmarks.bench_click_regions " + " ".join(sys.argv[1:]),
                                 "machine": platform.platform(), "frame": list(FRAME), "reach": args.reach}
    for n in (1, 5):
        ms = time_clicks(n, args.repeats, config)
        result[f"{n}_new_clicks_ms"] = {"min": round(min(ms), 2), "median": round(float(np.median(ms)), 2),
                                        "p95": round(float(np.percentile(ms, 95)), 2), "n": len(ms)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
