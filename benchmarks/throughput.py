"""Do we keep an LM server busy? Runs the real CLI against a loopback fake server with a fixed
latency L per call and S parallel slots (calls beyond S queue), and compares the wall time with
the ideal `calls x L / S`. Run by hand (takes ~20 minutes for the full sweep):

    python benchmarks/throughput.py                       # the sweep in docs/performance.md
    python benchmarks/throughput.py --rows 64:1000:0.2    # one row: S:N:L
    python benchmarks/throughput.py --dialect openai
    python benchmarks/throughput.py --dialect openai --rows 64:1000:0.2 --ray   # on Ray workers (needs ray)

Per row: LM calls, ideal seconds, measured seconds, their ratio, calls per accepted
conversation, the generator process's peak RSS (ru_maxrss of a process that runs only it) and
its CPU time (user + system, start-up included) per LM call.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_lm import FakeServer  # noqa: E402

# S:N:L. S = 1 runs with a shorter L so the row takes minutes, not an hour; the ratio is what counts.
SWEEP = ["1:100:0.02", "1:1000:0.02", "8:100:0.2", "8:1000:0.2", "64:100:0.2", "64:1000:0.2", "64:10000:0.05"]

# Runs the CLI in a fresh interpreter and reports that interpreter's own peak RSS.
RUNNER = """
import resource, runpy, sys
sys.argv = ["chitchat_gen"] + sys.argv[1:]
try:
    runpy.run_module("chitchat_gen", run_name="__main__")
except SystemExit as exit:
    code = exit.code
usage = resource.getrusage(resource.RUSAGE_SELF)
print("PEAK_RSS_KB", usage.ru_maxrss, "CPU_S", usage.ru_utime + usage.ru_stime, file=sys.stderr)
sys.exit(code)
"""


def run_row(slots: int, n: int, latency: float, dialect: str, concurrency: int | None, ray: bool = False) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="chitchat_bench_"))
    for name in ("task.yaml", "personas.jsonl", "seed_examples.jsonl"):
        shutil.copy(ROOT / name, workdir / name)
    with FakeServer(models=["granite4:3b"], latency=latency, slots=slots) as server:
        command = [sys.executable, "-c", RUNNER, "-n", str(n), "--restart", "--quiet", "--seed", "1",
                   "--engine", dialect, "--base-url", server.url, "--model", "granite4:3b",
                   "--concurrency", str(concurrency or 2 * slots)] + (["--ray"] if ray else [])
        start = time.monotonic()
        result = subprocess.run(command, cwd=workdir, capture_output=True, text=True,
                                env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        seconds = time.monotonic() - start
    if result.returncode != 0:
        raise SystemExit(f"row S={slots} N={n} failed:\n{result.stderr[-2000:]}")
    calls = len(server.chat_requests())
    lines = sum(1 for _ in open(workdir / "output/public/examples/chit_chat/final_data.jsonl"))
    rss = int(result.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
    cpu = float(result.stderr.rsplit("CPU_S", 1)[1].split()[0])
    shutil.rmtree(workdir)
    ideal = calls * latency / slots
    return {"S": slots, "N": n, "L": latency, "written": lines, "calls": calls, "ideal_s": round(ideal, 1),
            "wall_s": round(seconds, 1), "ratio": round(seconds / ideal, 3), "calls_per_conv": round(calls / n, 2),
            "peak_rss_mb": round(rss / 1024, 1), "cpu_ms_per_call": round(1000 * cpu / calls, 2)}


def ray_startup() -> float:
    """Seconds to start a local Ray instance as --ray does, and stop it (a fresh interpreter)."""
    timer = ("import logging, time, ray; start = time.monotonic(); "
             "ray.init(address='local', include_dashboard=False, logging_level=logging.WARNING); "
             "print(time.monotonic() - start); ray.shutdown()")
    result = subprocess.run([sys.executable, "-c", timer], capture_output=True, text=True, check=True)
    return float(result.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=SWEEP, metavar="S:N:L")
    parser.add_argument("--dialect", choices=["ollama", "openai"], default="ollama")
    parser.add_argument("--concurrency", type=int, help="default: 2 x S")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--ray", action="store_true",
                        help="run the CLI with --ray (a local Ray instance, its start-up included); peak RSS is the driver's")
    args = parser.parse_args()
    if args.ray:
        print(f"Ray start-up (ray.init of a local instance): {ray_startup():.1f} s", flush=True)
    print(f"{'S':>4}{'N':>7}{'L s':>6}{'written':>9}{'calls':>8}{'ideal s':>9}{'wall s':>8}{'ratio':>7}"
          f"{'calls/conv':>11}{'peak RSS MB':>13}{'CPU ms/call':>13}", flush=True)
    for row in args.rows:
        slots, n, latency = row.split(":")
        result = run_row(int(slots), int(n), float(latency), args.dialect, args.concurrency, args.ray)
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            print(f"{result['S']:>4}{result['N']:>7}{result['L']:>6}{result['written']:>9}{result['calls']:>8}"
                  f"{result['ideal_s']:>9}{result['wall_s']:>8}{result['ratio']:>7}{result['calls_per_conv']:>11}"
                  f"{result['peak_rss_mb']:>13}{result['cpu_ms_per_call']:>13}", flush=True)


if __name__ == "__main__":
    main()
