"""Per-prompt cost of the stateful predictor vs a stateless server (issue: model core benchmark).

Measures on a synthetic 128x256x256 (D, H, W) CT-like volume with the compact config:
    * init_state (normalise + zoom-out encode, once per session),
    * the first box (windows path: zoom-out decode + zoom-in windows encoded and cached; resample path: the
      grown box resampled, encoded once and cached),
    * a ``gru`` click, a ``decoder`` click (cached embeddings),
    * the GRU step of a ``both`` click as the service runs it (``refine=False``: what the click's reply waits
      for; its decoder step, the deferred refinement, runs after it untimed), last in each repeat and with
      its own random clicks, so the other measurements are those of a run without it,
    * the label map of two overlapping objects (a second box nested in the first), under each overlap rule,
    * a stateless click: what a server without session state pays per click (init + box + decoder with all
      clicks, everything re-encoded),
and the segvol-base image encoder per 32x256x256 window. Uses the shipped compact weights when present
(``--weights``; the zoom-in ROI, and so the cost, depends on what the model predicts), random ones otherwise.

    python -m benchmarks.bench_predictor --threads 2 --out benchmarks/results/predictor.json

The results file records the command, the machine and every sample; a PNG of the latency distributions is
written beside it (same name, ``.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from app.models import build_backbone, build_predictor
from benchmarks.plots import latency_plot

SHAPE = (128, 256, 256)
BOX = [40, 90, 100, 79, 159, 169]  # a 40x70x70 organ-sized box
INNER_BOX = [50, 105, 115, 69, 144, 154]  # nested in BOX: a second object overlapping the first


def synthetic_ct(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    """Air around an elliptic body with a brighter ellipsoidal 'organ' and noise (HU-like values)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    vol = np.full(shape, -1000.0, np.float32)
    body = (y / 0.8) ** 2 + (x / 0.9) ** 2 < 1
    vol[body] = 40.0
    organ = ((z + 0.05) / 0.3) ** 2 + ((y + 0.02) / 0.27) ** 2 + ((x + 0.05) / 0.27) ** 2 < 1
    vol[organ] = 120.0
    vol += rng.normal(0, 15, shape).astype(np.float32)
    return vol


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def _summary(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"median_ms": statistics.median(s), "p95_ms": s[min(len(s) - 1, int(0.95 * len(s)))],
            "min_ms": s[0], "n": len(s)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--config", default="compact")
    ap.add_argument("--weights", default="default", help='"default", a checkpoint path, or "none" (random)')
    ap.add_argument("--skip-segvol-base", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/predictor.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    weights = None if args.weights == "none" else args.weights
    predictor = build_predictor(args.config, weights=weights)
    vol = synthetic_ct()
    spacing = (1.5, 0.8, 0.8)
    rng = np.random.default_rng(1)
    samples: dict[str, list[float]] = {}

    def clicks_in_box(n: int) -> list[list[int]]:
        lo, hi = np.array(BOX[:3]), np.array(BOX[3:])
        return rng.integers(lo, hi + 1, size=(n, 3)).tolist()

    samples["init_state"] = []
    samples["first_box"] = []
    samples["gru_click"] = []
    samples["decoder_click"] = []
    samples["label_map_confidence"] = []
    samples["label_map_recent"] = []
    samples["both_click_gru_step"] = []
    both_rng = np.random.default_rng(2)
    for _ in range(args.repeats):
        t = time.perf_counter()
        state = predictor.init_state(vol, spacing)
        samples["init_state"].append((time.perf_counter() - t) * 1e3)
        samples["first_box"] += _time(lambda s=state: predictor.add_box(s, 1, BOX), 1)
        for p in clicks_in_box(args.clicks // args.repeats or 1):
            samples["gru_click"] += _time(lambda s=state, p=p: predictor.add_clicks(s, 1, [p], [1], mode="gru"), 1)
        for p in clicks_in_box(2):
            samples["decoder_click"] += _time(
                lambda s=state, p=p: predictor.add_clicks(s, 1, [p], [1], mode="decoder"), 1)
        predictor.add_box(state, 2, INNER_BOX)
        for rule in ("confidence", "recent"):
            samples[f"label_map_{rule}"] += _time(lambda s=state, r=rule: predictor.get_label_map(s, overlap=r), 1)
        for p in both_rng.integers(np.array(BOX[:3]), np.array(BOX[3:]) + 1, size=(3, 3)).tolist():
            samples["both_click_gru_step"] += _time(
                lambda s=state, p=p: predictor.add_clicks(s, 1, [p], [1], mode="both", refine=False), 1)
            predictor.refine(state, 1)

    def stateless_click() -> None:
        st = predictor.init_state(vol, spacing)
        predictor.add_box(st, 1, BOX)
        predictor.add_clicks(st, 1, clicks_in_box(3), [1, 0, 1], mode="decoder")

    samples["stateless_click"] = _time(stateless_click, max(2, args.repeats // 2))
    results: dict = {
        "command": "python -m benchmarks.bench_predictor " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": args.config,
        "volume_shape": list(SHAPE),
        "box": BOX,
        "threads": args.threads,
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__},
        "weights": args.weights,
        "stats": {k: _summary(v) for k, v in samples.items()},
        "samples_ms": samples,
    }
    if not args.skip_segvol_base:
        enc = build_backbone("segvol-base").eval()
        x = torch.rand(1, 1, *enc.frame)
        with torch.inference_mode():
            enc.encode(x)
            per_window = _time(lambda: enc.encode(x), 2)
        results["stats"]["segvol_base_encode_window"] = _summary(per_window)
        results["samples_ms"]["segvol_base_encode_window"] = per_window
    st = results["stats"]
    results["ratios"] = {
        "stateless_over_gru": st["stateless_click"]["median_ms"] / st["gru_click"]["median_ms"],
        "stateless_over_decoder": st["stateless_click"]["median_ms"] / st["decoder_click"]["median_ms"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    latency_plot(samples, args.out.with_suffix(".png"), f"predictor, {args.config}, {SHAPE} volume, "
                 f"{args.threads} threads")
    print(json.dumps({"stats": {k: round(v["median_ms"], 1) for k, v in st.items()}, "ratios": results["ratios"]},
                     indent=2))
    return results


if __name__ == "__main__":
    main()
