"""Reading what a load run produced: locust's CSV files, the server's Prometheus metrics, the memory trend."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

STEP_ORDER = ("create", "create_refused", "stream_open", "box", "click", "gru_frame", "frame", "mask", "undo",
              "download", "delete")


@dataclass(frozen=True)
class ServerCounters:
    """Totals read from one ``/metrics`` scrape."""

    live_sessions: float
    session_device_bytes: float
    created: float  # POST /v1/sessions answered 2xx
    deleted: float  # DELETE /v1/sessions/{sid} answered 2xx
    ended: dict[str, float]  # segsvc_sessions_ended_total by reason
    http_5xx: dict[str, float]  # "METHOD route status" -> count of 5xx replies
    requests: float
    queued_share: float = 0.0  # segsvc_device_queued_share: what admission control reads


def parse_metrics(text: str) -> ServerCounters:
    live = device = created = deleted = requests = queued = 0.0
    ended: dict[str, float] = {}
    errors: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "segsvc_sessions":
                live = sample.value
            elif sample.name == "segsvc_session_device_bytes":
                device = sample.value
            elif sample.name == "segsvc_device_queued_share":
                queued = sample.value
            elif sample.name == "segsvc_sessions_ended_total":
                ended[labels.get("reason", "?")] = sample.value
            elif sample.name == "segsvc_http_request_duration_seconds_count":
                status, route, method = labels.get("status", ""), labels.get("route", ""), labels.get("method", "")
                requests += sample.value
                if status.startswith("5"):
                    errors[f"{method} {route} {status}"] = sample.value
                elif status.startswith("2") and route == "/v1/sessions" and method == "POST":
                    created += sample.value
                elif status.startswith("2") and route == "/v1/sessions/{session_id}" and method == "DELETE":
                    deleted += sample.value
    return ServerCounters(live, device, created, deleted, ended, errors, requests, queued)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # locust writes "N/A" for a step with no request in the window


def step_table(stats_csv: Path) -> dict[str, dict[str, float | int | None]]:
    """Per step (locust request name) and "Aggregated": requests, failures, p50/p95/p99/avg/max ms, req/s."""
    table: dict[str, dict[str, float | int | None]] = {}
    with stats_csv.open(newline="") as fh:
        for row in csv.DictReader(fh):
            table[row["Name"]] = {
                "type": row["Type"], "requests": int(row["Request Count"]), "failures": int(row["Failure Count"]),
                "p50_ms": _number(row["50%"]), "p95_ms": _number(row["95%"]), "p99_ms": _number(row["99%"]),
                "avg_ms": round(float(row["Average Response Time"]), 1), "max_ms": _number(row["Max Response Time"]),
                "rps": round(float(row["Requests/s"]), 3),
            }
    order = {name: i for i, name in enumerate((*STEP_ORDER, "Aggregated"))}
    return dict(sorted(table.items(), key=lambda kv: order.get(kv[0], len(order))))


def failure_table(failures_csv: Path) -> list[dict[str, str | int]]:
    if not failures_csv.exists():
        return []
    with failures_csv.open(newline="") as fh:
        return [{"method": r["Method"], "step": r["Name"], "error": r["Error"], "count": int(r["Occurrences"])}
                for r in csv.DictReader(fh)]


def step_history(history_csv: Path, t0: float) -> dict[str, dict[str, list[float]]]:
    """Per step: time (s since ``t0``), p50 and p95 of the last ~10 s window, from locust's full history."""
    series: dict[str, dict[str, list[float]]] = {}
    with history_csv.open(newline="") as fh:
        for row in csv.DictReader(fh):
            p50, p95 = _number(row["50%"]), _number(row["95%"])
            if not p50 or not p95 or not row["Name"]:
                continue  # no request of this step in the window
            entry = series.setdefault(row["Name"], {"t_s": [], "p50_ms": [], "p95_ms": []})
            entry["t_s"].append(float(row["Timestamp"]) - t0)
            entry["p50_ms"].append(p50)
            entry["p95_ms"].append(p95)
    return series


def memory_trend(t_s: list[float], rss_mb: list[float], warmup_s: float, held_mb: list[float] | None = None
                 ) -> dict[str, float | int | None]:
    """RSS after the warm-up vs at the end, and the least-squares slope (MB/min) of the samples after it.

    ``held_mb``: what the live sessions hold at each sample (the server's ``segsvc_session_device_bytes``).
    RSS follows the sessions (more objects, deeper undo stacks); RSS minus that is what no session accounts
    for, whose slope is the leak indicator even while sessions grow.
    """
    t = np.asarray(t_s, dtype=float)
    rss = np.asarray(rss_mb, dtype=float)
    after = t >= warmup_s
    if after.sum() < 3:
        return {"warmup_s": warmup_s, "samples_after_warmup": int(after.sum()), "slope_mb_per_min": None}
    slope_per_s, _ = np.polyfit(t[after], rss[after], 1)
    unaccounted: dict[str, float] = {}
    if held_mb is not None:
        rest = rss - np.asarray(held_mb, dtype=float)
        unaccounted = {"rss_minus_session_bytes_slope_mb_per_min": round(float(np.polyfit(t[after], rest[after], 1)[0] * 60), 2)}
    # Means over the first and last minute after warm-up: one sample can land on a transient (an upload).
    first = rss[after & (t < warmup_s + 60)]
    last = rss[t >= t[-1] - 60]
    return {
        "warmup_s": warmup_s,
        "samples_after_warmup": int(after.sum()),
        "rss_mb_first_minute_after_warmup": round(float(first.mean()), 1),
        "rss_mb_last_minute": round(float(last.mean()), 1),
        "rss_mb_change": round(float(last.mean() - first.mean()), 1),
        "rss_mb_max": round(float(rss.max()), 1),
        "slope_mb_per_min": round(float(slope_per_s * 60), 2),
        **unaccounted,
    }
