"""The picture of a load run: latency per step over time (p50 and p95) and the server's memory over time.

    python -m loadtests.plot benchmarks/results/load_soak.json     # redraw load_soak.png from its results
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path


def load_plot(history: Mapping[str, Mapping[str, Sequence[float]]], samples: Mapping[str, Sequence[float]],
              path: Path, title: str, slope_mb_per_min: float | None, warmup_s: float) -> Path:
    """Two panels: p50 (solid) / p95 (dashed) per step; RSS, what the sessions hold, live sessions (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, mem) = plt.subplots(2, 1, figsize=(12, 8), sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, series) in enumerate(history.items()):
        if name == "Aggregated" or not series["t_s"]:
            continue
        colour = colours[i % len(colours)]
        lat.plot(series["t_s"], series["p50_ms"], color=colour, lw=1.2, label=f"{name} p50")
        lat.plot(series["t_s"], series["p95_ms"], color=colour, lw=0.9, ls="--", label=f"{name} p95")
    lat.set_yscale("log")
    lat.set_ylabel("ms (last 10 s window, log)")
    lat.grid(True, which="both", alpha=0.3)
    lat.legend(fontsize=7, ncol=1, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    lat.set_title(title)

    mem.plot(samples["t_s"], samples["rss_mb"], color="tab:red", lw=1.5, label="server RSS (MB)")
    mem.plot(samples["t_s"], samples["device_mb"], color="tab:orange", lw=1.2,
             label="held by live sessions (MB, state.nbytes)")
    mem.axvline(warmup_s, color="grey", ls=":", lw=1, label="end of warm-up")
    mem.set_ylabel("RSS (MB)")
    mem.set_xlabel("seconds since the users started")
    mem.grid(True, alpha=0.3)
    if slope_mb_per_min is not None:
        mem.text(0.99, 0.03, f"slope after warm-up: {slope_mb_per_min:+.2f} MB/min", transform=mem.transAxes,
                 ha="right", fontsize=9)
    live = mem.twinx()
    live.step(samples["t_s"], samples["live_sessions"], color="tab:blue", lw=1, where="post", label="live sessions")
    live.set_ylabel("live sessions")
    handles = mem.get_legend_handles_labels()[0] + live.get_legend_handles_labels()[0]
    mem.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.06, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def replot(results_json: Path) -> Path:
    """Redraw the PNG next to a ``load_<name>.json`` from the data it holds."""
    r = json.loads(results_json.read_text())
    machine, settings = r["machine"], r["settings"]
    title = (f"{settings['users']} users, {settings['duration']}, {r['server_ready'].get('model')} on "
             f"{r['server_ready'].get('device')} ({machine['cpus']} cores, mean load {machine['load1_during_mean']:.1f})")
    return load_plot(r["latency_history"], r["samples"], results_json.with_suffix(".png"), title,
                     r["memory"].get("slope_mb_per_min"), r["memory"]["warmup_s"])


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(replot(Path(arg)))
