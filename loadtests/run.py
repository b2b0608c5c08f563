"""Run a load test end to end: start the real server, drive it with locust, watch its memory, write results.

    python -m loadtests --name load --users 16 --duration 3m
    python -m loadtests --name soak --users 24 --duration 10m --fail-on-slope 2

Starts ``python -m app`` on a free port — the product: the ``compact`` config with its shipped weights
(``app/models/weights/compact.pt``) unless ``--server-args`` says otherwise — with room for the users
(``--max-sessions``, default users + 4) and a short idle timeout so that abandoned sessions are reaped
during the run. Then runs ``locust -f loadtests/locustfile.py --headless`` against it and, every
``--sample-every`` seconds, records the server's RSS (psutil), its live sessions, sessions created and
deleted and 5xx replies (its ``/metrics``) and the machine's load average, printing one progress line.

Writes ``<out-dir>/load_<name>.json`` (the command, the machine, the settings, p50/p95/p99 and req/s per
step, failures, 5xx, sessions, every memory sample, the RSS trend after warm-up in MB/min, the annotators'
Dice) and ``load_<name>.png`` (latency per step over time, RSS over time). Exits 1 when a request failed,
the server answered a 5xx, or the RSS slope after warm-up exceeds ``--fail-on-slope`` MB/min.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from loadtests.plot import load_plot
from loadtests.results import failure_table, memory_trend, parse_metrics, step_history, step_table

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
REFUSAL = "POST /v1/sessions 503"  # a new session refused by admission control (parse_metrics' key)


def parse_duration(text: str) -> int:
    """"90", "90s", "3m", "1h" -> seconds (locust's --run-time units)."""
    units = {"s": 1, "m": 60, "h": 3600}
    if text[-1:] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(args: argparse.Namespace, log_path: Path) -> tuple[subprocess.Popen[bytes], str, list[str]]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("SEGSVC_")}
    env.update(OMP_NUM_THREADS=str(args.server_threads), MKL_NUM_THREADS=str(args.server_threads))
    cmd = [sys.executable, "-m", "app", "--port", str(port), "--max-sessions", str(args.max_sessions),
           "--idle-timeout", str(args.idle_timeout), "--reaper-interval", "5", "--log-level", "warning",
           *shlex.split(args.server_args)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url, cmd
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"server did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def locust_command(args: argparse.Namespace, url: str, csv_prefix: Path, object_log: Path) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(args.users),
            "-r", str(args.spawn_rate), "-t", args.duration, "--host", url, "--csv", str(csv_prefix),
            "--csv-full-history", "--only-summary", "--loglevel", "WARNING", "--think", args.think,
            "--objects", args.objects, "--clicks", args.clicks, "--click-mode", args.click_mode,
            "--undo-prob", str(args.undo_prob), "--stream-prob", str(args.stream_prob),
            "--abandon-prob", str(args.abandon_prob), "--object-log", str(object_log),
            *(["--html", str(args.html)] if args.html else [])]


def _scrape(url: str):  # -> ServerCounters | None
    try:
        return parse_metrics(httpx.get(f"{url}/metrics", timeout=10).text)
    except httpx.HTTPError:
        return None


def drive(args: argparse.Namespace, server: subprocess.Popen[bytes], url: str, work: Path
          ) -> tuple[dict[str, list[float]], float, subprocess.Popen[bytes], list[str]]:
    """Run locust while sampling the server; return the samples, locust's start time, process, command."""
    object_log = work / "objects.jsonl"
    cmd = locust_command(args, url, work / "locust", object_log)
    samples: dict[str, list[float]] = {k: [] for k in (
        "t_s", "rss_mb", "live_sessions", "device_mb", "created", "deleted", "http_5xx", "load1",
        "server_cpu_s", "locust_cpu_s", "queued_share")}
    proc = psutil.Process(server.pid)
    t0 = time.time()
    locust = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=(work / "locust.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        _sample_until_done(args, url, proc, locust, samples, t0)
    finally:
        stop(locust)  # only still running when sampling failed
    if server.poll() is not None:
        raise RuntimeError(f"the server died during the run (exit {server.returncode})")
    return samples, t0, locust, cmd


def _sample_until_done(args: argparse.Namespace, url: str, proc: psutil.Process, locust: subprocess.Popen[bytes],
                       samples: dict[str, list[float]], t0: float) -> None:
    """One sample every ``--sample-every`` s until locust is done and every session has ended again."""
    locust_ps = psutil.Process(locust.pid)
    total_s = parse_duration(args.duration)
    drain_until: float | None = None
    while True:
        done = locust.poll() is not None
        counters = _scrape(url)
        if counters is not None:
            cpu = proc.cpu_times()
            try:
                lcpu = locust_ps.cpu_times()
                locust_cpu = lcpu.user + lcpu.system
            except psutil.Error:
                locust_cpu = samples["locust_cpu_s"][-1] if samples["locust_cpu_s"] else 0.0
            row = {"t_s": round(time.time() - t0, 1), "rss_mb": round(proc.memory_info().rss / 2**20, 1),
                   "live_sessions": counters.live_sessions,
                   "device_mb": round(counters.session_device_bytes / 2**20, 1), "created": counters.created,
                   "deleted": counters.deleted, "http_5xx": sum(counters.http_5xx.values()),
                   "load1": round(os.getloadavg()[0], 2), "server_cpu_s": round(cpu.user + cpu.system, 1),
                   "locust_cpu_s": round(locust_cpu, 1), "queued_share": round(counters.queued_share, 3)}
            for key, value in row.items():
                samples[key].append(value)
            print(f"[{row['t_s']:6.0f}/{total_s} s] rss {row['rss_mb']:7.1f} MB  live {row['live_sessions']:3.0f}  "
                  f"created {row['created']:4.0f}  deleted {row['deleted']:4.0f}  5xx {row['http_5xx']:.0f}  "
                  f"queued {row['queued_share']:.2f}  load {row['load1']:.2f}", flush=True)
        if done:
            if drain_until is None:  # locust is done: wait until every session has ended (abandoned ones
                drain_until = time.monotonic() + args.idle_timeout + 30  # expire on the idle clock)
            if (counters is not None and counters.live_sessions == 0) or time.monotonic() > drain_until:
                break
        time.sleep(args.sample_every)


def portable(text: str, tmp_dir: str) -> str:
    """Results name files relative to the repository and the run's scratch folder as $TMPDIR."""
    return text.replace(tmp_dir, "$TMPDIR").replace(str(REPO_ROOT) + "/", "").replace(str(REPO_ROOT), ".")


def _objects_summary(path: Path) -> dict[str, float | int | None]:
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    if not rows:
        return {"objects": 0}

    def mean(key: str) -> float:
        return round(sum(r[key] for r in rows) / len(rows), 4)

    return {"objects": len(rows), "mean_dice_after_box": mean("dice_box"), "mean_dice_final": mean("dice_final"),
            "mean_clicks": mean("clicks"), "mean_undos": mean("undos"),
            "with_stream": sum(1 for r in rows if r["stream"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="results go to load_<name>.json / .png")
    p.add_argument("--users", type=int, default=16)
    p.add_argument("--spawn-rate", type=float, default=2.0, help="users started per second")
    p.add_argument("--duration", default="3m", help="locust --run-time: 90s, 3m, 1h")
    p.add_argument("--think", default="2-5", help="seconds before each click, MIN-MAX")
    p.add_argument("--objects", default="2-4")
    p.add_argument("--clicks", default="5-10")
    p.add_argument("--click-mode", default="both", choices=["gru", "decoder", "both"])
    p.add_argument("--undo-prob", type=float, default=0.1)
    p.add_argument("--stream-prob", type=float, default=0.3)
    p.add_argument("--abandon-prob", type=float, default=0.05)
    p.add_argument("--max-sessions", type=int, help="server capacity (default: users + 4)")
    p.add_argument("--idle-timeout", type=float, default=60.0, help="server idle timeout (s): abandoned sessions")
    p.add_argument("--server-threads", type=int, default=1, help="OMP/torch threads of the server")
    p.add_argument("--server-args", default="", help='extra `python -m app` flags, e.g. "--config segvol-test '
                   '--random-weights" (default: none = compact with the shipped weights)')
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between memory samples")
    p.add_argument("--warmup", type=float, help="seconds excluded from the memory trend (default: 20%% of the run, "
                   "at least 60 s)")
    p.add_argument("--fail-on-slope", type=float, help="exit 1 when RSS grows faster than this (MB/min)")
    p.add_argument("--html", type=Path, help="also write locust's HTML report here")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. what else ran)")
    p.add_argument("--out-dir", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    # SIGTERM (e.g. `timeout`) unwinds like Ctrl-C, so that the server and locust are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.max_sessions = args.max_sessions or args.users + 4
    total_s = parse_duration(args.duration)
    warmup_s = args.warmup if args.warmup is not None else max(60.0, 0.2 * total_s)

    with tempfile.TemporaryDirectory(prefix="loadtest-") as tmp:
        work = Path(tmp)
        load_before = os.getloadavg()
        server, url, server_cmd = start_server(args, work / "server.log")
        try:
            ready = httpx.get(f"{url}/readyz", timeout=10).json()
            print(f"server {url} ready: {ready}; locust: {args.users} users for {args.duration}", flush=True)
            samples, t0, locust, locust_cmd = drive(args, server, url, work)
            time.sleep(1.0)
            final = _scrape(url)
        finally:
            stop(server)
        server_log_tail = (work / "server.log").read_text(errors="replace").splitlines()[-30:]
        steps = step_table(work / "locust_stats.csv")
        failures = failure_table(work / "locust_failures.csv")
        history = step_history(work / "locust_stats_history.csv", t0)
        objects = _objects_summary(work / "objects.jsonl")
        locust_tail = (work / "locust.log").read_text(errors="replace").splitlines()[-60:]

    run_end = min(len(samples["t_s"]), max(i for i, t in enumerate(samples["t_s"]) if t <= total_s + 5) + 1)
    trend = memory_trend(samples["t_s"][:run_end], samples["rss_mb"][:run_end], warmup_s,
                         samples["device_mb"][:run_end])
    trend["rss_mb_idle_before"] = samples["rss_mb"][0] if samples["rss_mb"] else None
    # Once every session has ended again (deleted, or expired on the idle clock), at the end of the drain.
    trend["rss_mb_idle_after"] = samples["rss_mb"][-1] if samples["live_sessions"][-1:] == [0.0] else None
    duration = samples["t_s"][-1] if samples["t_s"] else 0.0
    cores = os.cpu_count() or 1
    server_cores = samples["server_cpu_s"][-1] / duration if duration else 0.0
    locust_cores = samples["locust_cpu_s"][-1] / duration if duration else 0.0
    mean_load = sum(samples["load1"]) / len(samples["load1"]) if samples["load1"] else 0.0
    http_5xx = final.http_5xx if final is not None else {}
    # Load shedding (503 + Retry-After on a new session) is the server protecting the admitted annotators.
    refused = {k: v for k, v in http_5xx.items() if k == REFUSAL}
    http_5xx = {k: v for k, v in http_5xx.items() if k != REFUSAL}
    failed_requests = sum(int(s["failures"] or 0) for n, s in steps.items() if n != "Aggregated")
    results = {
        "what": "locust load test of the session service (loadtests/locustfile.py) against a real server",
        "command": "python -m loadtests " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "server_command": " ".join(shlex.quote(a) for a in ["python", *server_cmd[1:]]),
        "locust_command": " ".join(shlex.quote(a) for a in ["locust", *locust_cmd[3:]]),
        "server_ready": ready,
        "machine": {
            "platform": platform.platform(), "cpus": cores, "python": platform.python_version(),
            "server_threads": args.server_threads,
            "load_average_before": [round(v, 2) for v in load_before],
            "load1_during_mean": round(mean_load, 2), "load1_during_max": max(samples["load1"], default=0.0),
            "server_cores_used": round(server_cores, 2), "locust_cores_used": round(locust_cores, 2),
            "other_load_estimate": round(max(mean_load - server_cores - locust_cores, 0.0), 2),
            "note": args.note,
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "duration_s": duration,
        "steps": steps,
        "failures": failures,
        "failed_requests": failed_requests,
        "server": {
            "sessions_created": final.created if final else None,
            "sessions_deleted": final.deleted if final else None,
            "sessions_ended_by_reason": final.ended if final else None,
            "live_sessions_at_end": final.live_sessions if final else None,
            "http_requests": final.requests if final else None,
            "http_5xx": http_5xx,
            "sessions_refused": int(sum(refused.values())),
        },
        "memory": trend,
        "annotators": objects,
        "samples": samples,
        "latency_history": history,
        "locust_log_tail": [line for line in locust_tail if "Traceback" in line or "Error" in line][-20:],
        "server_log_tail": server_log_tail,
    }
    out = args.out_dir / f"load_{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(portable(json.dumps(results, indent=2), tmp) + "\n")
    title = (f"{args.users} users, {args.duration}, {ready.get('model')} on {ready.get('device')} "
             f"({cores} cores, mean load {mean_load:.1f})")
    load_plot(history, samples, out.with_suffix(".png"), title, trend.get("slope_mb_per_min"), warmup_s)  # type: ignore[arg-type]

    print(f"\nwrote {out} and {out.with_suffix('.png')}")
    print(f"{'step':<12} {'requests':>8} {'failures':>8} {'p50 ms':>8} {'p95 ms':>8} {'req/s':>7}")
    for name, s in steps.items():
        print(f"{name:<12} {s['requests']:>8} {s['failures']:>8} {s['p50_ms']!s:>8} {s['p95_ms']!s:>8} {s['rps']:>7}")
    print(f"memory: {trend}")
    print(f"server: {results['server']}")
    print(f"annotators: {objects}")
    problems = []
    if failed_requests:
        problems.append(f"{failed_requests} failed requests: {failures}")
    if http_5xx:
        problems.append(f"5xx replies: {http_5xx}")
    if locust.returncode not in (0, None) and not failed_requests:
        problems.append(f"locust exited with {locust.returncode}")
    slope = trend.get("slope_mb_per_min")
    if args.fail_on_slope is not None and (slope is None or slope > args.fail_on_slope):
        problems.append(f"RSS slope {slope} MB/min above {args.fail_on_slope}")
    for problem in problems:
        print("FAIL:", problem)
    return 1 if problems else 0
