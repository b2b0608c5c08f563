"""Summaries (means with the runtime rule), cases.csv, summary.json/md and the plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from evaluation.metrics import CSV_COLUMNS, OBJECT_CSV_COLUMNS, CaseResult
from evaluation.report import summarize, summarize_run, write_reports


def _result(name: str, method: str, modality: str, dsc: list[float], seconds: float = 1.0) -> CaseResult:
    return CaseResult(
        case_name=name,
        method=method,
        modality=modality,
        classes=[1],
        dsc=dsc,
        nsd=[v / 2 for v in dsc],
        running_time=[seconds] * 6,
        n_clicks=[0, 1, 1, 1, 1, 1],
        class_dsc=[[v] for v in dsc],
        class_nsd=[[v / 2] for v in dsc],
    )


def _results() -> list[CaseResult]:
    return [
        _result("a", "both", "CT", [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),
        _result("b", "both", "MR", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]),
        _result("c", "both", "MR", [0.9] * 6, seconds=16.0),  # 96 s > 90 s x 1 class: scored 0
        _result("a", "box_fill", "CT", [0.4] * 6),
    ]


def test_summary_means_apply_the_runtime_rule() -> None:
    s = summarize([r for r in _results() if r.method == "both"])
    assert s.n_cases == 3 and s.cases_over_budget == 1
    assert s.dsc_per_round == pytest.approx([0.2, 0.8 / 3, 1.0 / 3, 0.4, 1.4 / 3, 1.6 / 3])
    assert s.dsc_final == pytest.approx(1.6 / 3)
    assert s.nsd_final == pytest.approx(0.8 / 3)
    auc_a = 0.5 * 0.6 + 0.7 + 0.8 + 0.9 + 0.5 * 1.0
    auc_b = 0.5 * 0.2 + 0.3 + 0.4 + 0.5 + 0.5 * 0.6
    assert s.dsc_auc == pytest.approx((auc_a + auc_b + 0.0) / 3)
    assert s.mean_runtime_s == pytest.approx((6 + 6 + 96) / 3)


def test_summarize_run_groups_by_method_and_modality() -> None:
    out = summarize_run(_results())
    assert list(out["methods"]) == ["both", "box_fill"]
    assert out["by_modality"]["both"]["MR"]["n_cases"] == 2
    assert out["by_modality"]["both"]["CT"]["dsc_final"] == pytest.approx(1.0)
    assert out["by_modality"]["box_fill"] == {"CT": out["methods"]["box_fill"]}
    with pytest.raises(ValueError, match="^results"):
        summarize([])


def test_write_reports(tmp_path: Path) -> None:
    write_reports(_results(), tmp_path / "run", {"command": "python -m evaluation ..."})
    with open(tmp_path / "run" / "cases.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == CSV_COLUMNS
    assert len(rows) == 4 and rows[2]["over_budget"] == "True" and float(rows[2]["DSC_Final"]) == 0.0
    payload = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert payload["run"]["command"].startswith("python -m evaluation")
    assert payload["methods"]["both"]["cases_over_budget"] == 1
    md = (tmp_path / "run" / "summary.md").read_text()
    assert "| both | 3 |" in md and "| box_fill | 1 |" in md
    header, rule = md.splitlines()[:2]
    assert header.count("|") == rule.count("|")  # a well-formed markdown table
    assert (tmp_path / "run" / "dsc_per_round.png").stat().st_size > 1000
    with open(tmp_path / "run" / "objects.csv") as f:
        reader = csv.DictReader(f)
        objects = list(reader)
    assert reader.fieldnames == OBJECT_CSV_COLUMNS
    assert [(o["CaseName"], o["method"], o["label"]) for o in objects] == [
        ("a", "both", "1"), ("b", "both", "1"), ("c", "both", "1"), ("a", "box_fill", "1")]
    assert float(objects[1]["DSC_6"]) == pytest.approx(0.6) and float(objects[1]["NSD_6"]) == pytest.approx(0.3)
    assert float(objects[2]["DSC_1"]) == 0.0  # over budget: scored 0, as in cases.csv


def test_objects_are_grouped_by_size_and_modality_with_the_click_contract(tmp_path: Path) -> None:
    small = _result("s", "both", "MR", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    small.class_voxels = [400]
    small.class_obeyed = [[1.0], [1.0], [0.0], [1.0], [None]]  # no click in the last round
    small.class_fixed = [[0.5], [0.25], [0.0], [1.0], [None]]
    large = _result("l", "both", "CT", [0.8] * 6)
    large.class_voxels = [50_000]
    large.class_obeyed = [[1.0]] * 5
    large.class_fixed = [[1.0]] * 5
    out = summarize_run([small, large])["objects"]["both"]
    assert out["all"]["n_objects"] == 2 and out["all"]["n_clicks"] == 9
    assert out["all"]["clicks_obeyed"] == pytest.approx(8 / 9)
    assert out["all"]["region_fixed"] == pytest.approx((0.5 + 0.25 + 0.0 + 1.0 + 5.0) / 9)
    assert out["all"]["obeyed_per_round"] == pytest.approx([1.0, 1.0, 0.5, 1.0, 1.0])
    assert list(out["by_size"]) == ["<1k", ">20k"]
    assert out["by_size"]["<1k"]["dsc_final"] == pytest.approx(0.6)
    assert out["by_size"]["<1k"]["region_fixed"] == pytest.approx(1.75 / 4)
    assert out["by_modality"]["CT"]["clicks_obeyed"] == 1.0
    write_reports([small, large], tmp_path)
    md = (tmp_path / "summary.md").read_text()
    assert "| both | size <1k | 1 | 0.1000 | 0.6000 | 4 | 75.0 % | 43.8 % |" in md
    assert (tmp_path / "click_contract.png").stat().st_size > 1000
    with open(tmp_path / "objects.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["size_group"] == "<1k" and rows[0]["obeyed_4"] == "0.0" and rows[0]["fixed_6"] == ""
