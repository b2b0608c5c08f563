"""Issue 24's measurements in one command: 12, 50 and 100 annotators, the 50-user run profiled, a summary table
and plot, and the acceptance checks.

    python -m benchmarks.load_suite                       # 3 minutes per run, about 12 minutes in all
    python -m benchmarks.load_suite --duration 20s --users 2,4 --profile-users 4 --tag tiny   # does it run?

Each run is ``python -m loadtests --name <tag>u<users> --users N --spawn-rate 2 --duration D`` (the
``--profile-users`` one through ``benchmarks.profile_load``: flame graph ``profile_<tag>u<N>.svg``), so every run
also leaves its own ``load_<tag>u<N>.json`` / ``.png``. Then writes ``load_suite<tag>.json`` (per run: GRU
feedback p95 = the ``gru_frame`` step, the ``both`` click reply p95 = decoder refinement included, box p95, all
requests p95, failures, 5xx, refused sessions, server RSS; and the acceptance checks) and
``load_suite<tag>.png`` (those p95s against the number of users). Only meaningful on quiet cores: the
results record the machine's load average, read it before the numbers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_GRU_P95_MS = 100.0
TARGET_BOX_P95_MS = 300.0


def p95(run: dict[str, Any], step: str) -> float | None:
    s = run["steps"].get(step)
    return None if s is None or not s["requests"] else s["p95_ms"]


def summarise(name: str, users: int, run: dict[str, Any]) -> dict[str, Any]:
    server = run["server"]
    return {
        "name": name, "users": users,
        "gru_feedback_p95_ms": p95(run, "gru_frame"),
        "click_reply_p95_ms": p95(run, "click"),
        "decoder_frame_p95_ms": p95(run, "frame"),
        "box_p95_ms": p95(run, "box"),
        "create_p95_ms": p95(run, "create"),
        "all_p95_ms": p95(run, "Aggregated"),
        "requests": run["steps"]["Aggregated"]["requests"],
        "failed_requests": run["failed_requests"],
        "http_5xx": sum(server["http_5xx"].values()),
        "sessions_refused": server.get("sessions_refused", 0),
        "sessions_created": server["sessions_created"],
        "rss_mb_max": max(run["samples"]["rss_mb"], default=None),
        "live_sessions_max": max(run["samples"]["live_sessions"], default=None),
        "load1_during_mean": run["machine"]["load1_during_mean"],
    }


def checks(rows: list[dict[str, Any]]) -> dict[str, bool | None]:
    """The issue's acceptance, per run: instant GRU feedback and boxes under target, nothing failed."""
    out: dict[str, bool | None] = {}
    for r in rows:
        gru, box = r["gru_feedback_p95_ms"], r["box_p95_ms"]
        out[r["name"]] = (gru is not None and gru < TARGET_GRU_P95_MS and box is not None
                          and box < TARGET_BOX_P95_MS and r["failed_requests"] == 0 and r["http_5xx"] == 0)
    return out


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    users = [r["users"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, label in (("gru_feedback_p95_ms", "GRU frame (instant feedback)"),
                       ("click_reply_p95_ms", "both click reply (decoder included)"),
                       ("box_p95_ms", "box"), ("all_p95_ms", "all requests")):
        ax.plot(users, [r[key] if r[key] is not None else float("nan") for r in rows], marker="o", label=label)
    ax.axhline(TARGET_GRU_P95_MS, color="grey", ls=":", lw=1)
    ax.axhline(TARGET_BOX_P95_MS, color="grey", ls="--", lw=1)
    for r in rows:
        if r["sessions_refused"]:
            ax.annotate(f"{r['sessions_refused']} refused", (r["users"], r["all_p95_ms"] or 0), fontsize=8)
    ax.set_xlabel("annotators")
    ax.set_ylabel("p95 (ms)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load_suite", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", default="12,50,100", help="comma-separated user counts, one run each")
    p.add_argument("--duration", default="3m")
    p.add_argument("--spawn-rate", default="2")
    p.add_argument("--profile-users", type=int, default=50, help="the run profiled with py-spy (0: none)")
    p.add_argument("--tag", default="", help="prefix of every run name and suffix of the suite's files")
    p.add_argument("--out-dir", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    p.add_argument("--note", default="")
    args, extra = p.parse_known_args(argv)
    rows = []
    # The runs start in the repository root: a folder inside it is passed (and so recorded) relative to it.
    out_dir = args.out_dir.resolve()
    out_arg = str(out_dir.relative_to(REPO_ROOT)) if out_dir.is_relative_to(REPO_ROOT) else str(out_dir)
    for users in (int(u) for u in args.users.split(",")):
        name = f"{args.tag}u{users}"
        common = ["--name", name, "--duration", args.duration, "--out-dir", out_arg,
                  "--users", str(users), "--spawn-rate", args.spawn_rate, "--note", args.note, *extra]
        module = "benchmarks.profile_load" if users == args.profile_users else "loadtests"
        rc = subprocess.run([sys.executable, "-m", module, *common], cwd=REPO_ROOT).returncode
        run = json.loads((args.out_dir / f"load_{name}.json").read_text())
        rows.append({**summarise(name, users, run), "exit_code": rc})
    result = {
        "what": "issue 24's load suite (benchmarks/load_suite.py): p95 per step against the number of annotators",
        "command": "python -m benchmarks.load_suite " + " ".join(argv if argv is not None else sys.argv[1:]),
        "targets": {"gru_feedback_p95_ms": TARGET_GRU_P95_MS, "box_p95_ms": TARGET_BOX_P95_MS},
        "runs": rows,
        "meets_targets": checks(rows),
    }
    out = args.out_dir / f"load_suite{args.tag}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, out.with_suffix(".png"), f"p95 against annotators ({args.duration} each)")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
