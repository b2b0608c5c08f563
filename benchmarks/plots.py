"""Latency distribution plots for the benchmark results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def latency_plot(samples: Mapping[str, Sequence[float]], path: Path, title: str) -> Path:
    """One horizontal box plot per measurement (log-scale milliseconds), with each sample drawn as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k, v in samples.items() if len(v)]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(names) + 1.5))
    ax.boxplot([list(samples[k]) for k in names], vert=False, tick_labels=names, showfliers=False)
    for i, k in enumerate(names, start=1):
        ax.scatter(list(samples[k]), [i] * len(samples[k]), s=8, alpha=0.5, color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("milliseconds (log scale)")
    ax.set_title(title)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
