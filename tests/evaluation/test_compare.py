"""evaluation.compare: runs side by side from their summary.json files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.compare import main


def _run(tmp: Path, name: str, final: float) -> Path:
    d = tmp / name
    d.mkdir()
    per_round = [0.2, 0.3, 0.35, 0.4, 0.45, final]
    summary = {"methods": {"both": {"n_cases": 3, "dsc_auc": 1.5, "nsd_auc": 1.0, "dsc_final": final,
                                    "nsd_final": 0.5, "dsc_per_round": per_round, "nsd_per_round": per_round,
                                    "mean_runtime_s": 1.0, "cases_over_budget": 0}}}
    (d / "summary.json").write_text(json.dumps(summary))
    return d


def test_table_and_plot_per_run(tmp_path: Path) -> None:
    a, b = _run(tmp_path, "a", 0.5), _run(tmp_path, "b", 0.6)
    out = tmp_path / "cmp" / "ablation"
    main([f"train only={a}", f"+ synthetic={b}", "--out", str(out)])
    table = out.with_suffix(".md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| train only") or line.startswith("| + synthetic")]
    assert len(rows) == 2 and "0.5000" in rows[0] and "0.6000" in rows[1]
    assert out.with_suffix(".png").stat().st_size > 1000


def test_missing_method_names_the_run(tmp_path: Path) -> None:
    a = _run(tmp_path, "a", 0.5)
    with pytest.raises(ValueError, match="method: .*has no 'gru'"):
        main([f"x={a}", "--method", "gru", "--out", str(tmp_path / "o")])
