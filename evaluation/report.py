"""Reports of a run: cases.csv (official columns), objects.csv (per label), summary.json, summary.md,
dsc_per_round.png and click_contract.png.

Summaries are means over cases with the runtime rule applied (a case over its budget counts as 0). The object
summaries (per size group and modality, with the click contract) are means over objects (case labels): a small
object counts as much as a large one, which is what the size groups are for.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.click_contract import SIZE_GROUPS, size_group
from evaluation.metrics import CSV_COLUMNS, N_ROUNDS, OBJECT_CSV_COLUMNS, CaseResult, click_auc


@dataclass(frozen=True)
class Summary:
    """Means over the cases of one method (optionally one modality)."""

    n_cases: int
    dsc_auc: float
    nsd_auc: float
    dsc_final: float
    nsd_final: float
    dsc_per_round: list[float]
    nsd_per_round: list[float]
    mean_runtime_s: float
    cases_over_budget: int


def summarize(results: Sequence[CaseResult]) -> Summary:
    """Mean of the per-case metrics (runtime rule applied)."""
    if not results:
        raise ValueError("results: nothing to summarise")
    dsc = np.array([r.scored_dsc for r in results], dtype=np.float64)
    nsd = np.array([r.scored_nsd for r in results], dtype=np.float64)
    return Summary(
        n_cases=len(results),
        dsc_auc=float(np.mean([click_auc(list(d)) for d in dsc])),
        nsd_auc=float(np.mean([click_auc(list(n)) for n in nsd])),
        dsc_final=float(dsc[:, -1].mean()),
        nsd_final=float(nsd[:, -1].mean()),
        dsc_per_round=[float(v) for v in dsc.mean(axis=0)],
        nsd_per_round=[float(v) for v in nsd.mean(axis=0)],
        mean_runtime_s=float(np.mean([r.total_running_time for r in results])),
        cases_over_budget=sum(r.over_budget for r in results),
    )


@dataclass(frozen=True)
class ObjectSummary:
    """Means over objects (one class of one case) and over their clicks: DSC per round (runtime rule
    applied) and the click contract. ``clicks_obeyed``/``region_fixed`` are None when no click was placed."""

    n_objects: int
    n_clicks: int
    dsc_per_round: list[float]
    dsc_final: float
    clicks_obeyed: float | None
    region_fixed: float | None
    obeyed_per_round: list[float | None]
    fixed_per_round: list[float | None]


@dataclass(frozen=True)
class _Object:
    modality: str
    size_group: str
    dsc: list[float]
    obeyed: list[float | None]
    fixed: list[float | None]


def _objects(results: Sequence[CaseResult]) -> list[_Object]:
    out = []
    for r in results:
        zero = r.over_budget
        for k in range(r.num_class):
            out.append(_Object(
                modality=r.modality or "unknown",
                size_group=size_group(r.class_voxels[k]) if r.class_voxels else "unknown",
                dsc=[0.0 if zero else rd[k] for rd in r.class_dsc],
                obeyed=[ro[k] for ro in r.class_obeyed],
                fixed=[rf[k] for rf in r.class_fixed],
            ))
    return out


def _mean_or_none(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def summarize_objects(objects: Sequence[_Object]) -> ObjectSummary:
    """Means over ``objects`` (at least one) and over all their clicks."""
    if not objects:
        raise ValueError("objects: nothing to summarise")
    dsc = np.array([o.dsc for o in objects], dtype=np.float64)
    n_click_rounds = max(len(o.obeyed) for o in objects)

    def per_round(attr: str) -> list[float | None]:
        return [_mean_or_none(getattr(o, attr)[i] for o in objects if i < len(getattr(o, attr)))
                for i in range(n_click_rounds)]

    return ObjectSummary(
        n_objects=len(objects),
        n_clicks=sum(v is not None for o in objects for v in o.obeyed),
        dsc_per_round=[float(v) for v in dsc.mean(axis=0)],
        dsc_final=float(dsc[:, -1].mean()),
        clicks_obeyed=_mean_or_none(v for o in objects for v in o.obeyed),
        region_fixed=_mean_or_none(v for o in objects for v in o.fixed),
        obeyed_per_round=per_round("obeyed"),
        fixed_per_round=per_round("fixed"),
    )


def summarize_run(results: Sequence[CaseResult]) -> dict[str, dict[str, Any]]:
    """As plain dicts: {"methods": {method: Summary}, "by_modality": {method: {modality: Summary}},
    "objects": {method: {"all": ObjectSummary, "by_size": {group: ...}, "by_modality": {modality: ...}}}}."""
    methods = list(dict.fromkeys(r.method for r in results))
    out: dict[str, dict[str, Any]] = {"methods": {}, "by_modality": {}, "objects": {}}
    for m in methods:
        mine = [r for r in results if r.method == m]
        out["methods"][m] = asdict(summarize(mine))
        modalities = sorted({r.modality or "unknown" for r in mine})
        out["by_modality"][m] = {
            mod: asdict(summarize([r for r in mine if (r.modality or "unknown") == mod])) for mod in modalities
        }
        objects = _objects(mine)
        groups = [g for g in (*SIZE_GROUPS, "unknown") if any(o.size_group == g for o in objects)]
        out["objects"][m] = {
            "all": asdict(summarize_objects(objects)),
            "by_size": {g: asdict(summarize_objects([o for o in objects if o.size_group == g])) for g in groups},
            "by_modality": {
                mod: asdict(summarize_objects([o for o in objects if o.modality == mod])) for mod in modalities
            },
        }
    return out


def write_cases_csv(results: Sequence[CaseResult], path: str | Path) -> None:
    _write_csv(path, CSV_COLUMNS, (r.row() for r in results))


def write_objects_csv(results: Sequence[CaseResult], path: str | Path) -> None:
    """One row per case, method and label (the per-class values behind each case's means)."""
    _write_csv(path, OBJECT_CSV_COLUMNS, (row for r in results for row in r.object_rows()))


def _write_csv(path: str | Path, columns: list[str], rows: Iterable[Mapping[str, object]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_summary_json(
    summary: Mapping[str, Any], path: str | Path, run_info: Mapping[str, Any] | None = None
) -> None:
    payload = {"run": dict(run_info or {}), **summary}
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """Markdown tables: one row per method, then DSC_Final per method and modality."""
    methods: Mapping[str, Mapping[str, Any]] = summary["methods"]
    rounds = " | ".join(f"DSC_{i}" for i in range(1, N_ROUNDS + 1))
    lines = [
        f"| method | cases | DSC_AUC | NSD_AUC | DSC_Final | NSD_Final | {rounds} | runtime/case (s) | over budget |",
        "|---|" + "---:|" * (7 + N_ROUNDS),
    ]
    for name, s in methods.items():
        per_round = " | ".join(f"{v:.4f}" for v in s["dsc_per_round"])
        lines.append(
            f"| {name} | {s['n_cases']} | {s['dsc_auc']:.4f} | {s['nsd_auc']:.4f} | {s['dsc_final']:.4f} | "
            f"{s['nsd_final']:.4f} | {per_round} | {s['mean_runtime_s']:.2f} | {s['cases_over_budget']} |"
        )
    modalities = sorted({mod for per in summary["by_modality"].values() for mod in per})
    lines += ["", "DSC_Final by modality:", "", "| method | " + " | ".join(modalities) + " |"]
    lines.append("|---|" + "---:|" * len(modalities))
    for name, per in summary["by_modality"].items():
        cells = [f"{per[mod]['dsc_final']:.4f} (n={per[mod]['n_cases']})" if mod in per else "-" for mod in modalities]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if summary.get("objects"):
        lines += ["", "Objects (means over case labels) and the click contract:", "",
                  "| method | group | objects | DSC_1 (box) | DSC_Final | clicks | clicks obeyed | region fixed |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for name, per in summary["objects"].items():
            rows = [("all", per["all"])]
            rows += [(f"size {g}", s) for g, s in per["by_size"].items()]
            rows += [(mod, s) for mod, s in per["by_modality"].items()]
            for label, s in rows:
                lines.append(
                    f"| {name} | {label} | {s['n_objects']} | {s['dsc_per_round'][0]:.4f} | {s['dsc_final']:.4f} | "
                    f"{s['n_clicks']} | {_percent(s['clicks_obeyed'])} | {_percent(s['region_fixed'])} |"
                )
    return "\n".join(lines) + "\n"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.1f} %"


def plot_dsc_per_round(summary: Mapping[str, Any], path: str | Path) -> None:
    """PNG line plot of mean DSC per round (1 = box, 2..6 = clicks), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    rounds = np.arange(1, N_ROUNDS + 1)
    for name, s in summary["methods"].items():
        ax.plot(rounds, s["dsc_per_round"], marker="o", label=f"{name} (n={s['n_cases']})")
    ax.set_xticks(rounds, ["box"] + [f"click {i}" for i in range(1, N_ROUNDS)])
    ax.set_xlabel("round")
    ax.set_ylabel("mean DSC")
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title("Mean DSC per interaction round")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_click_contract(summary: Mapping[str, Any], path: str | Path) -> None:
    """PNG of the click contract per click round: clicks obeyed and region fixed, one line pair per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    rounds = np.arange(2, N_ROUNDS + 1)
    for name, per in summary.get("objects", {}).items():
        s = per["all"]
        obeyed = [np.nan if v is None else v for v in s["obeyed_per_round"]]
        fixed = [np.nan if v is None else v for v in s["fixed_per_round"]]
        if not obeyed:
            continue
        (line,) = ax.plot(rounds[: len(obeyed)], obeyed, marker="o", label=f"{name}: clicks obeyed")
        ax.plot(rounds[: len(fixed)], fixed, marker="s", linestyle="--", color=line.get_color(),
                label=f"{name}: region fixed")
    ax.set_xticks(rounds, [f"click {i}" for i in range(1, N_ROUNDS)])
    ax.set_xlabel("round")
    ax.set_ylabel("share")
    ax.set_ylim(0.0, 1.05)
    ax.grid(alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize="small")
    ax.set_title("Click contract per round (means over clicks)")
    if not ax.get_lines():
        ax.text(0.5, 0.5, "no clicks", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_reports(
    results: Sequence[CaseResult], out_dir: str | Path, run_info: Mapping[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Write cases.csv, objects.csv, summary.json, summary.md, dsc_per_round.png and click_contract.png into
    ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_cases_csv(results, out / "cases.csv")
    write_objects_csv(results, out / "objects.csv")
    summary = summarize_run(results)
    write_summary_json(summary, out / "summary.json", run_info)
    (out / "summary.md").write_text(summary_markdown(summary))
    plot_dsc_per_round(summary, out / "dsc_per_round.png")
    plot_click_contract(summary, out / "click_contract.png")
    return summary
