"""``python -m training --config FILE [--resume]``."""

from __future__ import annotations

import argparse
import os

# Before torch loads OpenMP: idle threads sleep instead of spinning. On a shared CPU the spinning thread burns
# the run's share while the other waits for a core (measured: 2.1 -> 0.6 CPU-seconds per step,
# docs/training.md, phase 3). An explicit OMP_WAIT_POLICY in the environment still wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from training.config import load_config  # noqa: E402
from training.loop import Trainer  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("--config", required=True, help="JSON training config (see training/configs/)")
    parser.add_argument("--resume", action="store_true", help="continue from <run_dir>/checkpoint.pt")
    args = parser.parse_args(argv)
    Trainer(load_config(args.config), resume=args.resume).run()


if __name__ == "__main__":
    main()
