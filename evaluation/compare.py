"""Compare several evaluation runs (e.g. training ablation arms) on one method: a table and one plot.

    python -m evaluation.compare --method both --out docs/results/ablation \
        "train only=runs/ablation_eval/compact_labelled" "+ synthetic=runs/ablation_eval/compact_synthetic"

Reads each run's ``summary.json`` (written by ``python -m evaluation``) and writes ``<out>.md`` (DSC_AUC,
DSC_Final, DSC per round, NSD_Final per run) and ``<out>.png`` (mean DSC per round, one line per run).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from evaluation.report import plot_dsc_per_round


def load_arms(arms: Sequence[tuple[str, Path]], method: str) -> dict[str, Mapping[str, Any]]:
    """{label: that run's summary of ``method``}; a run without the method is an error naming it."""
    out: dict[str, Mapping[str, Any]] = {}
    for label, run_dir in arms:
        summary = json.loads((run_dir / "summary.json").read_text())
        methods = summary["methods"]
        if method not in methods:
            raise ValueError(f"method: {run_dir} has no {method!r} (it has {sorted(methods)})")
        out[label] = methods[method]
    return out


def comparison_markdown(arms: Mapping[str, Mapping[str, Any]], method: str) -> str:
    n_rounds = len(next(iter(arms.values()))["dsc_per_round"])
    head = ["run", "cases", "DSC_AUC", "DSC_Final", "NSD_Final"] + [f"DSC_{i}" for i in range(1, n_rounds + 1)]
    lines = [f"Method `{method}`.", "", "| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for label, s in arms.items():
        cells = [label, str(s["n_cases"]), f"{s['dsc_auc']:.4f}", f"{s['dsc_final']:.4f}", f"{s['nsd_final']:.4f}"]
        cells += [f"{v:.4f}" for v in s["dsc_per_round"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _arm(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"run: expected LABEL=RUN_DIR, got {text!r}")
    return label, Path(path)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m evaluation.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=_arm, help="LABEL=RUN_DIR (a folder written by python -m evaluation)")
    p.add_argument("--method", default="both", help="the method to compare (default: both)")
    p.add_argument("--out", required=True, type=Path, help="output path without suffix (.md and .png are written)")
    args = p.parse_args(argv)
    arms = load_arms(args.runs, args.method)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(comparison_markdown(arms, args.method))
    plot_dsc_per_round({"methods": arms}, args.out.with_suffix(".png"))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
