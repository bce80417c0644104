"""How fast the embedded model writes conversations with K slots, runs side by side.

    python benchmarks/local_speed.py --slots 1 4 -n 6 --seed 2026 --rounds 2
    python benchmarks/local_speed.py --slots 1 4 -n 30 --seed 2026 --together   # Linux

`--concurrency K` on the local engine keeps K conversations in flight and gives the model K
slots, whose next tokens it computes in one batch. Each round runs the CLI once per K, in turn,
in a fresh output folder, so a busy machine slows them alike; with `--together` the runs of a
round go at once, each pinned to a core of its own (one llama.cpp thread each), so they share
whatever else loads the machine. Drops differ between runs (the conversations differ), so LM
calls per minute is the figure to compare: the table shows the median per K over the rounds,
and its ratio to the first K.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start_run(slots: int, n: int, seed: int, folder: Path, core: int | None) -> tuple[subprocess.Popen, Path]:
    """The CLI on the shipped task with `slots` conversations in flight, on `core` alone if given."""
    command = [sys.executable, "-m", "chitchat_gen", "--task-paths", str(ROOT / "task.yaml"), "--engine", "local",
               "-n", str(n), "--seed", str(seed), "--concurrency", str(slots), "--output-dir", str(folder), "--quiet"]
    pin = None if core is None else (lambda: os.sched_setaffinity(0, {core}))
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=pin), folder


def finish_run(started: tuple[subprocess.Popen, Path]) -> dict:
    """Wait for a run; its runs.jsonl entry."""
    child, folder = started
    _, stderr = child.communicate()
    if child.returncode:
        sys.exit(f"Error: {' '.join(child.args)} failed (exit {child.returncode}): {stderr.strip()[-300:]}")
    return json.loads(next(folder.rglob("runs.jsonl")).read_text().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 4], help="the K to compare; the first is the baseline")
    parser.add_argument("-n", type=int, default=6, help="conversations per run")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--together", action="store_true",
                        help="run a round's K at once, each on a core of its own (Linux; as many cores as K values)")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0)) if args.together else []
    seen = {k: [] for k in args.slots}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            folder = {k: Path(scratch) / f"k{k}-round{round_}" for k in args.slots}
            if cores:  # all at once; a round later, each K on the next core, as cores differ in load
                started = [(k, start_run(k, args.n, args.seed, folder[k], cores[(i + round_) % len(cores)]))
                           for i, k in enumerate(args.slots)]
                done = [(k, finish_run(run)) for k, run in started]
            else:  # in turn
                done = [(k, finish_run(start_run(k, args.n, args.seed, folder[k], None))) for k in args.slots]
            for k, run in done:
                seen[k].append(run)
                print(f"round {round_ + 1}, K={k}: {run['seconds']:.0f} s, {run['calls']} calls, "
                      f"dropped {sum(run['dropped'].values())}", file=sys.stderr)
    print(f"| slots (K) | wall time, s | LM calls/min | LM calls per accepted | dropped | vs K={args.slots[0]} (calls/min) |")
    print("| --- | --- | --- | --- | --- | --- |")
    base = None
    for k, runs in seen.items():
        rate = statistics.median(60 * r["calls"] / r["seconds"] for r in runs)
        base = base or rate
        print(f"| {k} | {statistics.median(r['seconds'] for r in runs):.0f} | {rate:.1f} | "
              f"{statistics.median(r['calls'] / r['accepted'] for r in runs):.1f} | "
              f"{statistics.median(sum(r['dropped'].values()) for r in runs):g} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
