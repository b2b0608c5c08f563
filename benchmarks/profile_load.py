"""Profile the server during a load test: where the time goes under concurrency (issue 24).

    python -m benchmarks.profile_load --name u50 --users 50 --spawn-rate 2 --duration 3m

Runs ``python -m loadtests`` with every argument given (so the load results land in
``benchmarks/results/load_<name>.json`` / ``.png`` as usual), finds the server it starts, and attaches py-spy
(``pip install -e '.[dev]'``) to it for the run: sampling at ``--rate`` Hz, every thread (the event loop, the
device's bulk and instant lanes), ``--nonblocking`` so that the server is never paused by the sampling.
Writes beside the load results:

- ``profile_<name>.svg``: the flame graph (root at the bottom; hover a box for its frame and share);
- ``profile_<name>.json``: the samples' share per thread and per serving stage (corrector, decoder, diff
  encoding, mask download, JSON, HTTP, ...: ``benchmarks.flamegraph.STAGES``), the command, the machine.

Queueing for the device is not CPU time, so no sampler shows it: the server's own ``segsvc_device_queue_waiting``
and the step latencies of the load results show it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from benchmarks.flamegraph import flamegraph_svg, parse_folded, summary
from loadtests.run import parse_duration

REPO_ROOT = Path(__file__).resolve().parents[1]


def find_server(parent: psutil.Process, timeout_s: float) -> psutil.Process:
    """The ``python -m app`` process ``parent`` starts (its child), once it answers /readyz: the profile is of
    serving, not of loading the model."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in parent.children(recursive=True):
            try:
                cmd = child.cmdline()
            except psutil.Error:
                continue
            if "-m" in cmd and "app" in cmd and "--port" in cmd:
                url = f"http://127.0.0.1:{cmd[cmd.index('--port') + 1]}/readyz"
                while time.monotonic() < deadline and child.is_running():
                    try:
                        if httpx.get(url, timeout=2).status_code == 200:
                            return child
                    except httpx.TransportError:
                        pass
                    time.sleep(0.2)
        if not parent.is_running():
            break
        time.sleep(0.2)
    raise RuntimeError("the load test's server did not start")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="passed to loadtests; outputs are profile_<name>.*")
    p.add_argument("--duration", default="3m", help="passed to loadtests; also how long py-spy samples")
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--out-dir", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args, rest = p.parse_known_args(argv)
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed: pip install -e '.[dev]'")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    load_cmd = [sys.executable, "-m", "loadtests", "--name", args.name, "--duration", args.duration,
                "--out-dir", str(args.out_dir), *rest]
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        folded = Path(tmp) / "stacks.folded"
        load = subprocess.Popen(load_cmd, cwd=REPO_ROOT)
        try:
            server = find_server(psutil.Process(load.pid), timeout_s=600)
            spy_cmd = [spy, "record", "--pid", str(server.pid), "--rate", str(args.rate), "--threads",
                       "--nonblocking", "--format", "raw", "--duration", str(parse_duration(args.duration)),
                       "--output", str(folded)]
            spy_run = subprocess.run(spy_cmd, capture_output=True, text=True)
            load_rc = load.wait()
        finally:
            if load.poll() is None:
                load.terminate()
                load.wait(timeout=60)
        if not folded.exists():
            raise SystemExit(f"py-spy wrote nothing: {spy_run.stderr[-2000:]}")
        stacks = parse_folded(folded.read_text().splitlines())
    title = f"server profile during load test {args.name!r} ({args.duration}, {os.cpu_count()} cores)"
    svg = args.out_dir / f"profile_{args.name}.svg"
    flamegraph_svg(stacks, svg, title)
    result = {
        "what": "py-spy samples of the server during a load test (benchmarks/profile_load.py)",
        "command": "python -m benchmarks.profile_load " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "py_spy_command": "py-spy " + " ".join(shlex.quote(a) for a in spy_cmd[1:] if a != str(folded)),
        "load_results": f"load_{args.name}.json",
        "load_exit_code": load_rc,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_after": [round(v, 2) for v in os.getloadavg()]},
        **summary(stacks),
    }
    out = args.out_dir / f"profile_{args.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {svg} and {out}")
    for stage, share in result["stages_share"].items():  # type: ignore[union-attr]
        print(f"  {stage:<28} {100 * share:5.1f} %")
    return 0 if load_rc == 0 else load_rc


if __name__ == "__main__":
    raise SystemExit(main())
