"""``python -m challenge``: answer one challenge round for every ``inputs/*.npz``.

    python -m challenge --inputs /workspace/inputs --outputs /workspace/outputs
    python -m challenge --inputs in/ --outputs out/ --config segvol-base --weights segvol.pt --device cuda:0

Exit status: 0 when every case was written, 1 when some case failed (the others are still written), 2 on bad
arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from client.wire.vocab import REFINE_MODES


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m challenge",
                                description="CVPR 2025 interactive segmentation challenge: one round, all inputs.")
    p.add_argument("--inputs", required=True, help="folder of input .npz files")
    p.add_argument("--outputs", required=True, help="folder for the output .npz files (created if missing)")
    p.add_argument("--config", default="compact", help="registered model configuration (default compact)")
    p.add_argument("--weights", default="default",
                   help='"default" (the weights shipped for the config), a checkpoint path, or "none" '
                        "(random initialisation: tests only)")
    p.add_argument("--device", default="auto", help='"auto" (CUDA when present), "cpu" or "cuda:N"')
    p.add_argument("--mode", default="both", choices=REFINE_MODES, help="how clicks are answered (default both)")
    p.add_argument("--spacing-order", default="xyz", choices=("xyz", "zyx"),
                   help="axis order of the files' spacing (challenge files: xyz)")
    p.add_argument("--log-level", default="info", choices=["error", "warning", "info", "debug"])
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from app.models import build_predictor
    from challenge.predict import predict_folder

    weights = None if args.weights.lower() == "none" else args.weights
    if weights is None:
        logging.getLogger("challenge").warning("--weights none: randomly initialised model (tests only)")
    try:
        predictor = build_predictor(args.config, weights=weights, device=args.device)
        reports = predict_folder(predictor, args.inputs, args.outputs, mode=args.mode,
                                 spacing_order=args.spacing_order)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1 if any(r.error is not None for r in reports) else 0


if __name__ == "__main__":
    raise SystemExit(main())
