"""Command line: run the CVPR 2025 interactive protocol and write the reports.

    python -m evaluation --data ../shared/data --split dev --out runs/dev \
        [--server URL] [--methods backbone,gru,decoder,both,random_walker,box_fill] \
        [--config compact] [--weights PATH|default|none] [--box 2d|3d] [--cases N|name,name] [--tau 0.1]
        [--prompts click|scribble|lasso] [--zoom-in auto|windows|resample] [--roi-frame D,H,W] [--propagation-reach 15] [--propagation-tolerance 0.05]
        [--click-region-reach 30] [--click-region-foreground-reach 30] [--click-region-tolerance 0.1] [--click-region-gain 2]
        [--click-region-confident 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from app.models.click_regions import RegionConfig
from app.models.propagation import PropagationConfig
from client.wire.vocab import OVERLAP_RULES
from evaluation.backends import MODEL_METHODS, Method, PredictorMethod
from evaluation.baselines import BoxFillMethod, RandomWalkerMethod
from evaluation.cases import DEFAULT_MIN_VOXELS, find_cases
from evaluation.metrics import NSD_TOLERANCE_MM
from evaluation.region_rule import REGION_KINDS
from evaluation.report import summary_markdown, write_reports
from evaluation.runner import evaluate

BASELINES = ("random_walker", "box_fill")
ALL_METHODS = (*MODEL_METHODS, *BASELINES)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data", help="manifest folder, or any folder of npz files with gts")
    p.add_argument("--split", default="dev", help="manifest split ('all' for every split)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--server", default=None, help="base URL of a running server (default: in-process)")
    p.add_argument("--server-masks", choices=("stream", "get"), default="stream",
                   help="with --server: per-object masks from the diff stream (each round's label map waits for "
                        "every prompt's diff there) or downloaded")
    p.add_argument("--methods", default=",".join(ALL_METHODS), help=f"comma-separated subset of {ALL_METHODS}")
    p.add_argument("--config", default="compact", help="model config (in-process backend)")
    p.add_argument("--weights", default="default", help="'default', a checkpoint path, or 'none' (random init)")
    p.add_argument("--device", default="auto", help="in-process device: auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--tau", type=float, default=0.1, help="corrector uncertainty band |p - 0.5| < tau")
    p.add_argument("--zoom-in", choices=("auto", "windows", "resample"), default="auto",
                   help="in-process zoom-in path; auto: what the weights were trained for")
    p.add_argument("--roi-frame", default=None, help="with resample: the ROI frame 'D,H,W' (default: weights')")
    p.add_argument("--propagation-reach", type=float, default=PropagationConfig.reach,
                   help="geodesic click propagation reach in ROI frame voxels (0: off; app.models.propagation)")
    p.add_argument("--propagation-tolerance", type=float, default=PropagationConfig.tolerance,
                   help="geodesic click propagation intensity tolerance (image in [0, 1])")
    p.add_argument("--click-region-reach", type=float, default=RegionConfig.reach,
                   help="background click regions' reach in ROI frame voxels (0: off; app.models.click_regions)")
    p.add_argument("--click-region-foreground-reach", type=float, default=RegionConfig.foreground_reach,
                   help="foreground click regions' reach in ROI frame voxels (0: off)")
    p.add_argument("--click-region-tolerance", type=float, default=RegionConfig.tolerance,
                   help="click regions' intensity tolerance (image in [0, 1])")
    p.add_argument("--click-region-gain", type=float, default=RegionConfig.gain, help="click regions' logit")
    p.add_argument("--click-region-confident", type=float, default=RegionConfig.confident,
                   help="click regions leave voxels the model gives the other label with |logit| above this")
    p.add_argument("--box", choices=("2d", "3d"), default="2d", help="2d: official mid-slice box; 3d: exact gt box")
    p.add_argument("--overlap", choices=OVERLAP_RULES, default="confidence",
                   help="model methods' label map: the most confident object wins overlaps (the service's "
                        "default), or the most recently prompted one")
    p.add_argument("--objects", choices=("exclusive", "independent"), default="exclusive",
                   help="model methods: the classes are one label map's, so one class's foreground click is a "
                        "background click to the others (the service's default), or each class sees only its "
                        "own prompts")
    p.add_argument("--prompts", choices=("click", *REGION_KINDS), default="click",
                   help="corrections of rounds 2..6: the challenge's click, or a scribble / lasso drawn where it "
                        "would click (evaluation.region_rule; in-process model methods only)")
    p.add_argument("--cases", default=None, help="first N cases, or comma-separated case names")
    p.add_argument("--min-voxels", type=int, default=DEFAULT_MIN_VOXELS, help="smallest label scored as an object")
    p.add_argument("--spacing-order", choices=("zyx", "xyz"), default="zyx", help="spacing order of bare npz files")
    p.add_argument("--tolerance", type=float, default=NSD_TOLERANCE_MM, help="NSD tolerance in mm")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def _method_names(spec: str) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_METHODS]
    if unknown or not names:
        raise ValueError(f"methods: unknown {unknown}; choose from {list(ALL_METHODS)}")
    return list(dict.fromkeys(names))


def build_methods(args: argparse.Namespace, names: list[str]) -> list[Method]:
    """Model methods share one predictor (in-process) or one server connection; baselines run locally."""
    model_names = [n for n in names if n in MODEL_METHODS]
    methods: dict[str, Method] = {}
    if model_names and args.server:
        from client import Client
        from evaluation.backends import ServerMethod

        api = Client(args.server)
        if not api.health():
            raise ValueError(f"server: no answer from {args.server}/healthz")
        for n in model_names:
            methods[n] = ServerMethod(api, n, masks=args.server_masks, overlap=args.overlap,
                                      exclusive_objects=args.objects == "exclusive")
    elif model_names:
        from app.models import PredictorConfig, build_predictor

        weights = None if args.weights.lower() == "none" else args.weights
        roi_frame = _roi_frame(args.roi_frame)
        predictor = build_predictor(
            args.config, weights=weights, device=args.device,
            predictor_config=PredictorConfig(tau=args.tau, zoom_in=args.zoom_in, roi_frame=roi_frame,
                                             propagation_reach=args.propagation_reach,
                                             propagation_tolerance=args.propagation_tolerance,
                                             click_region_reach=args.click_region_reach,
                                             click_region_foreground_reach=args.click_region_foreground_reach,
                                             click_region_tolerance=args.click_region_tolerance,
                                             click_region_gain=args.click_region_gain,
                                             click_region_confident=args.click_region_confident),
        )
        for n in model_names:
            methods[n] = PredictorMethod(predictor, n, overlap=args.overlap,
                                         exclusive_objects=args.objects == "exclusive")
    if "random_walker" in names:
        methods["random_walker"] = RandomWalkerMethod()
    if "box_fill" in names:
        methods["box_fill"] = BoxFillMethod()
    return [methods[n] for n in names]


def _roi_frame(spec: str | None) -> tuple[int, int, int] | None:
    if spec is None:
        return None
    try:
        sizes = tuple(int(v) for v in spec.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) < 1:
        raise ValueError(f"roi-frame: expected three positive integers 'D,H,W', got {spec!r}")
    return sizes  # type: ignore[return-value]


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_info(args: argparse.Namespace, names: list[str], n_cases: int) -> dict[str, Any]:
    # The model settings apply to in-process model methods only (a server runs its own).
    local_model = not args.server and any(n in MODEL_METHODS for n in names)
    return {
        "command": "python -m evaluation " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "commit": _git_commit(),
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "backend": f"server {args.server} (masks: {args.server_masks})" if args.server else "in-process",
        "config": args.config if local_model else None,
        "weights": args.weights if local_model else None,
        "device": args.device if local_model else None,
        "tau": args.tau if local_model else None,
        "zoom_in": args.zoom_in if local_model else None,
        "roi_frame": args.roi_frame if local_model else None,
        "propagation_reach": args.propagation_reach if local_model else None,
        "propagation_tolerance": args.propagation_tolerance if local_model else None,
        "click_region_reach": args.click_region_reach if local_model else None,
        "click_region_foreground_reach": args.click_region_foreground_reach if local_model else None,
        "click_region_tolerance": args.click_region_tolerance if local_model else None,
        "click_region_gain": args.click_region_gain if local_model else None,
        "click_region_confident": (args.click_region_confident
                                   if local_model and math.isfinite(args.click_region_confident) else None),
        "objects": args.objects if any(n in MODEL_METHODS for n in names) else None,
        "box": args.box,
        "prompts": args.prompts,
        "overlap": args.overlap if any(n in MODEL_METHODS for n in names) else None,
        "split": args.split,
        "cases": n_cases,
        "methods": names,
        "min_voxels": args.min_voxels,
        "nsd_tolerance_mm": args.tolerance,
        "host": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        names = _method_names(args.methods)
        split = None if args.split == "all" else args.split
        refs = find_cases(args.data, split=split, select=args.cases, spacing_order=args.spacing_order)
        if args.prompts != "click" and (args.server or any(n not in MODEL_METHODS for n in names)):
            raise ValueError(f"prompts: {args.prompts} runs with in-process model methods only "
                             f"({sorted(MODEL_METHODS)}), not with --server or the baselines")
        methods = build_methods(args, names)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = evaluate(
        methods,
        refs,
        box_mode=args.box,
        min_voxels=args.min_voxels,
        tolerance_mm=args.tolerance,
        progress=not args.no_progress,
        prompts=args.prompts,
    )
    if not results:
        print("error: no case had a label to score", file=sys.stderr)
        return 1
    summary = write_reports(results, Path(args.out), run_info(args, names, len(refs)))
    print(summary_markdown(summary))
    print(f"reports written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
