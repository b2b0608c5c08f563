"""Model commands.

    python -m app.models verify-weights PATH [--config NAME] [--with-text]

verify-weights: exit 0 and print a summary when PATH loads into the config (default: the one the file
declares, else segvol-base); exit 1 with the reason when it does not; exit 2 on bad usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2


def _verify_weights(args: argparse.Namespace) -> int:
    from app.models.build import build_backbone, build_corrector
    from app.models.configs import MODEL_CONFIGS
    from app.models.weights import CheckpointError, load_checkpoint, read_checkpoint, resolve_config_name

    if args.config is not None and args.config not in MODEL_CONFIGS:
        print(
            f"error: --config: unknown config {args.config!r}; known: {sorted(MODEL_CONFIGS)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        ckpt = read_checkpoint(args.path)
        name = resolve_config_name(ckpt, args.config)
        backbone = build_backbone(name, with_text=args.with_text)
        corrector = build_corrector(name) if ckpt.corrector is not None else None
        report = load_checkpoint(ckpt, backbone, corrector, config_name=name)
    except CheckpointError as exc:
        print(f"REFUSED: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"OK: {args.path} loads into config {name!r}")
    print("  " + report.summary().replace("\n", "\n  "))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app.models", description="Model utilities.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    verify = commands.add_parser(
        "verify-weights",
        help="check that a checkpoint loads into a model config",
        description="Check that a checkpoint (HF pytorch_model.bin, SegFM, SegVol_v1.pth or ours) "
        "loads into a model config, strictly.",
    )
    verify.add_argument("path", metavar="PATH", help="checkpoint file")
    verify.add_argument("--config", default=None, help="model config (default: the file's, else segvol-base)")
    verify.add_argument("--with-text", action="store_true", help="build and load the CLIP text branch too")
    verify.set_defaults(handler=_verify_weights)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
