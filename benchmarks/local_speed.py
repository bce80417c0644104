"""How fast the embedded model writes conversations with K slots, runs side by side.

    python benchmarks/local_speed.py --slots 1 4 -n 6 --seed 2026 --rounds 2
    python benchmarks/local_speed.py --slots 1 4 -n 30 --seed 2026 --together   # Linux
    python benchmarks/local_speed.py --slots 1 4 --calls 8 --together --rounds 3   # LM calls alone

`--concurrency K` on the local engine keeps K conversations in flight and gives the model K
slots, whose next tokens it computes in one batch. Each round runs the CLI once per K, in turn,
in a fresh output folder, so a busy machine slows them alike; with `--together` the runs of a
round go at once, each pinned to a core of its own (one llama.cpp thread each), so they share
whatever else loads the machine. Drops differ between runs (the conversations differ), so LM
calls per minute is the figure to compare: the table shows the median per K over the rounds,
and its ratio to the first K. `--calls R` leaves the pipeline out: R chat calls of one shape
(a shared system text, a question, 60 tokens at most), K at a time from K threads.
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
# --calls: the local engine's chat, K threads at once; the figures go where the CLI's would.
CALLS = """
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from chitchat_gen.local import _local_model_path
from chitchat_gen.plug import make_chat
slots, calls, folder = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
chat = make_chat({"type": "local", "model": _local_model_path(None), "n_ctx": 4096, "concurrency": slots,
                  "base_urls": [], "temperature": 0.7, "max_tokens": 60})
system = {"role": "system", "content": "You are a friendly assistant. Answer in two or three sentences. " * 4}
ask = lambda i: chat([system, {"role": "user", "content": f"Tell me about topic number {i}: birds and tea."}], seed=i)
ask(-1)  # warm up
start = time.perf_counter()
with ThreadPoolExecutor(slots) as pool:
    list(pool.map(ask, range(calls)))
folder.mkdir(parents=True)
(folder / "runs.jsonl").write_text(json.dumps({"seconds": time.perf_counter() - start, "calls": calls}) + "\\n")
"""


def start_run(slots: int, n: int, seed: int, folder: Path, core: int | None, calls: int | None = None
              ) -> tuple[subprocess.Popen, Path]:
    """The CLI on the shipped task with `slots` conversations in flight (or, with `calls`, that
    many chat calls), on `core` alone if given."""
    command = [sys.executable, "-m", "chitchat_gen", "--task-paths", str(ROOT / "task.yaml"), "--engine", "local",
               "-n", str(n), "--seed", str(seed), "--concurrency", str(slots), "--output-dir", str(folder), "--quiet"]
    if calls:
        command = [sys.executable, "-c", CALLS, str(slots), str(calls), str(folder)]
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
    parser.add_argument("--calls", type=int, help="time this many chat calls per run instead of the CLI")
    parser.add_argument("--together", action="store_true",
                        help="run a round's K at once, each on a core of its own (Linux; as many cores as K values)")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0)) if args.together else []
    seen = {k: [] for k in args.slots}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            folder = {k: Path(scratch) / f"k{k}-round{round_}" for k in args.slots}
            if cores:  # all at once; a round later, each K on the next core, as cores differ in load
                started = [(k, start_run(k, args.n, args.seed, folder[k], cores[(i + round_) % len(cores)], args.calls))
                           for i, k in enumerate(args.slots)]
                done = [(k, finish_run(run)) for k, run in started]
            else:  # in turn
                done = [(k, finish_run(start_run(k, args.n, args.seed, folder[k], None, args.calls))) for k in args.slots]
            for k, run in done:
                seen[k].append(run)
                print(f"round {round_ + 1}, K={k}: {run['seconds']:.0f} s, {run['calls']} calls, "
                      f"dropped {sum(run.get('dropped', {}).values())}", file=sys.stderr)
    print(f"| slots (K) | wall time, s | LM calls/min | LM calls per accepted | dropped | vs K={args.slots[0]} (calls/min) |")
    print("| --- | --- | --- | --- | --- | --- |")
    base = None
    for k, runs in seen.items():
        rate = statistics.median(60 * r["calls"] / r["seconds"] for r in runs)
        base = base or rate
        per_accepted, dropped = ("-", "-") if args.calls else (
            f"{statistics.median(r['calls'] / r['accepted'] for r in runs):.1f}",
            f"{statistics.median(sum(r['dropped'].values()) for r in runs):g}")
        print(f"| {k} | {statistics.median(r['seconds'] for r in runs):.0f} | {rate:.1f} | {per_accepted} | {dropped} | "
              f"{rate / base:.2f}x |")

if __name__ == "__main__":
    main()
