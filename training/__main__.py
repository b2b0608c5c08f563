"""``python -m training --config FILE [--resume]``."""

from __future__ import annotations

import argparse

from training.config import load_config
from training.loop import Trainer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("--config", required=True, help="JSON training config (see training/configs/)")
    parser.add_argument("--resume", action="store_true", help="continue from <run_dir>/checkpoint.pt")
    args = parser.parse_args(argv)
    Trainer(load_config(args.config), resume=args.resume).run()


if __name__ == "__main__":
    main()
