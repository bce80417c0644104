"""Does a big folder cost only the new work? Builds output folders of N conversations by
replication and times, on each, what a user does with it: the real CLI and viewer, each in a
fresh interpreter, with its own peak RSS (VmHWM) and CPU time. Run by hand:

    python benchmarks/scale.py                                # N = 10,000 and 100,000
    python benchmarks/scale.py --sizes 1000000                # the 1M folder: ~5 GB, deleted after
    python benchmarks/scale.py --sizes 10000 --pythonpath /tmp/before   # another checkout, same rows

The folder: 1,000 conversations made once with the fake LM (tests/fake_lm.py) whose user and
assistant turns are the seed examples' messages (human-length text, not one-liners), then
replicated with new ids to N, in both files, with one runs.jsonl entry and no checkpoint: as a
folder written by an older version. The rows, in order, on the same folder:

    first run       `-n N`, nothing to do, no checkpoint yet: the full check and the full count
    nothing to do   `-n N` again
    torn tail       half a line appended to final_data.jsonl (a kill -9), then `-n N`
    resume + 10     `-n N+10` against a fake server (no latency)
    stats           `stats FOLDER --task-paths task.yaml`
    view            `view`: the first /api/tasks, the first /api/stats, one text search
    export          `export FOLDER --format openai -o FILE`
    SIGTERM         `-n N+100000` against a fake server (0.05 s a call), SIGTERM once it writes,
                    `--grace 5`: seconds from the signal to the exit
At the end both files must hold the same ids in the same order (checked, streaming).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from fake_lm import FakeServer, canned_reply  # noqa: E402

from chitchat_gen import generate, load_task  # noqa: E402
from chitchat_gen.record import format_record, messages, read_jsonl, to_line  # noqa: E402

BASE = 1000
TASK_FOLDER = "public/examples/chit_chat"
# Runs the CLI and prints its own peak RSS at exit. subtle: not ru_maxrss, which on Linux also
# counts the parent's memory at the fork; VmHWM is the high-water mark of this program alone.
RUNNER = """
import atexit, os, runpy, sys
def peak():
    status, used = open("/proc/self/status").read(), os.times()
    print("PEAK_RSS_KB", status.split("VmHWM:")[1].split()[0], "CPU_S", used.user + used.system, file=sys.stderr)
atexit.register(peak)
sys.argv = ["chitchat_gen"] + sys.argv[1:]
runpy.run_module("chitchat_gen", run_name="__main__")
"""


def seed_replies():
    """A reply function: the fake LM's, but user and assistant turns are the seeds' own messages."""
    said = [m for _, _, record, _ in read_jsonl(ROOT / "seed_examples.jsonl") for m in messages(record)]
    users = [m["content"] for m in said if m["role"] == "user"]
    answers = [m["content"] for m in said if m["role"] == "assistant"]
    draw = random.Random(1)

    def reply(messages_sent, json_schema=None, **options):
        text = canned_reply(messages_sent, json_schema)
        if text.startswith("User: I wonder"):
            return draw.choice(users)
        if text.startswith("Here is a friendly answer"):
            return draw.choice(answers)
        return text
    return reply


def base_records(workdir: Path) -> list[str]:
    """BASE lines of final_data.jsonl, made once and kept in the work folder."""
    path = workdir / "base.jsonl"
    if not path.exists():
        task = load_task(workdir / "task.yaml")
        with open(path, "w", encoding="utf-8") as out:
            for record in generate(task, BASE, chat=seed_replies(), seed=1, concurrency=4):
                out.write(to_line(record))
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def build(workdir: Path, n: int) -> Path:
    """output/<task>/ with n conversations, both files, one runs.jsonl entry, no checkpoint."""
    folder = workdir / "output" / TASK_FOLDER
    shutil.rmtree(workdir / "output", ignore_errors=True)
    folder.mkdir(parents=True)
    base = [(line, json.loads(line)) for line in base_records(workdir)]
    with open(folder / "final_data.jsonl", "w", encoding="utf-8") as final, \
            open(folder / "formatted_output.jsonl", "w", encoding="utf-8") as formatted:
        for i in range(n):
            line, record = base[i % len(base)]
            new_id = uuid.uuid4().hex
            final.write(line.replace(record["conversation_id"], new_id, 1))
            formatted.write(to_line({**format_record(record), "conversation_id": new_id}))
    run = {"date": "2026-12-03 00:00 UTC", "command": f"-n {n}", "engine": "ollama", "model": "granite4:3b",
           "seed": 1, "wanted": n, "accepted": n, "dropped": {}, "calls": 0, "tokens": 0, "seconds": 0.0,
           "stopped": None, "endpoints": []}
    (folder / "runs.jsonl").write_text(json.dumps(run) + "\n", encoding="utf-8")
    return folder


def timed(command: list[str], cwd: Path, env: dict) -> tuple[float, float, float]:
    """(seconds, peak RSS in MB, CPU seconds) of one CLI command (its arguments) in its own process."""
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", RUNNER] + command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {result.returncode}: {result.stderr[-2000:]}")
    return seconds, peak_mb(result.stderr), cpu_seconds(result.stderr)


def peak_mb(stderr: str) -> float:
    return int(stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0]) / 1024


def cpu_seconds(stderr: str) -> float:
    return float(stderr.rsplit("CPU_S", 1)[1].split()[0])


def viewer_rows(workdir: Path, env: dict) -> dict:
    """First /api/tasks, first /api/stats and one search, timed against a fresh viewer; its peak RSS."""
    process = subprocess.Popen([sys.executable, "-m", "chitchat_gen", "view", "output", "--port", "0"], cwd=workdir,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = process.stdout.readline().split(" at ")[1].split(" ")[0]
    rows = {}
    for name, path in [("view /api/tasks", "api/tasks"), ("view /api/stats", f"api/stats?task={TASK_FOLDER}"),
                       ("view search", f"api/conversations?task={TASK_FOLDER}&q=telescope")]:
        start, cpu = time.monotonic(), cpu_of(process.pid)
        with urllib.request.urlopen(url + path, timeout=3600) as answer:
            answer.read()
        rows[name] = (time.monotonic() - start, None, cpu_of(process.pid) - cpu)
    rows["view /api/tasks"] = (rows["view /api/tasks"][0], high_water(process.pid), rows["view /api/tasks"][2])
    process.terminate()  # subtle: not SIGINT, which a benchmark started in the background ignores, and so its children
    process.wait()
    return rows


def sigterm_row(workdir: Path, env: dict, n: int) -> tuple[float, float, None]:
    """Seconds from a SIGTERM (sent once the run writes) to the run's exit, with --grace 5; peak RSS."""
    final = workdir / "output" / TASK_FOLDER / "final_data.jsonl"
    size = final.stat().st_size
    with FakeServer(models=["granite4:3b"], latency=0.05, slots=64) as server:
        process = subprocess.Popen([sys.executable, "-m", "chitchat_gen", "-n", str(n + 100_000), "--quiet",
                                    "--base-url", server.url, "--concurrency", "16", "--grace", "5"],
                                   cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peak = 0.0
        while final.stat().st_size == size and process.poll() is None:
            peak = max(peak, high_water(process.pid))
            time.sleep(0.1)
        start = time.monotonic()
        process.send_signal(signal.SIGTERM)
        while process.poll() is None:  # subtle: the CLI leaves by os._exit, so no atexit report
            peak = max(peak, high_water(process.pid))
            time.sleep(0.05)
    return time.monotonic() - start, peak, None


def cpu_of(pid: int) -> float:
    """A live process's CPU seconds so far (user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def high_water(pid: int) -> float:
    """A live process's peak RSS so far, in MB (0 once it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/status").read_text().split("VmHWM:")[1].split()[0]) / 1024
    except (OSError, IndexError):
        return 0.0


def in_step(folder: Path) -> tuple[int, bool]:
    """(records, whether formatted_output.jsonl holds the same ids in the same order), streaming."""
    count, same = 0, True
    with open(folder / "final_data.jsonl", "rb") as final, open(folder / "formatted_output.jsonl", "rb") as formatted:
        for record_line in final:
            twin = formatted.readline()
            count += 1
            same = same and bool(twin) and json.loads(record_line)["conversation_id"] == json.loads(twin)["conversation_id"]
        same = same and not formatted.readline()
    return count, same


def measure(n: int, workdir: Path, pythonpath: Path) -> dict:
    env = {"PYTHONPATH": str(pythonpath), "PATH": "/usr/bin:/bin"}
    cli = []
    start = time.monotonic()
    folder = build(workdir, n)
    rows = {"build": (time.monotonic() - start, None, None),
            "size (MB)": (folder.joinpath("final_data.jsonl").stat().st_size / 1e6, None, None)}
    rows["first run (no checkpoint)"] = timed(cli + ["-n", str(n), "--quiet"], workdir, env)
    rows["nothing to do"] = timed(cli + ["-n", str(n), "--quiet"], workdir, env)
    with open(folder / "final_data.jsonl", "a", encoding="utf-8") as out:
        out.write('{"task_name": "public/examples/chit_chat", "is_seed": false, "conver')
    rows["torn tail"] = timed(cli + ["-n", str(n), "--quiet"], workdir, env)
    with FakeServer(models=["granite4:3b"]) as server:
        rows["resume + 10"] = timed(cli + ["-n", str(n + 10), "--quiet", "--base-url", server.url], workdir, env)
    rows["stats"] = timed(cli + ["stats", str(folder), "--task-paths", "task.yaml"], workdir, env)
    rows.update(viewer_rows(workdir, env))
    rows["export"] = timed(cli + ["export", str(folder), "--format", "openai", "-o", str(workdir / "export.jsonl")],
                           workdir, env)
    (workdir / "export.jsonl").unlink()
    rows["SIGTERM to exit"] = sigterm_row(workdir, env, n)
    count, same = in_step(folder)
    rows["files in step"] = (f"{count:,} records, {'same ids, same order' if same else 'NOT IN STEP'}", None, None)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000])
    parser.add_argument("--pythonpath", type=Path, default=ROOT, help="the checkout to measure (default: this one)")
    parser.add_argument("--workdir", type=Path, help="where to build the folders (default: a temporary folder)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="chitchat_scale_"))
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("task.yaml", "personas.jsonl", "seed_examples.jsonl"):
        shutil.copy(ROOT / name, workdir / name)
    results = {}
    try:
        for n in args.sizes:
            results[n] = measure(n, workdir, args.pythonpath.resolve())
            print(f"N = {n:,}: " + json.dumps(results[n]), flush=True)
    finally:
        shutil.rmtree(workdir / "output", ignore_errors=True)  # the 1M folder is ~5 GB
    names = list(next(iter(results.values())))
    print("\n| row | " + " | ".join(f"N = {n:,}: s | MB | CPU s" for n in results) + " |")
    print("| --- |" + " --- | --- | --- |" * len(results))
    for name in names:
        cells = []
        for n in results:
            cells += ["-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)
                      for value in results[n][name]]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\n(uptime at the end: {os.getloadavg()})")


if __name__ == "__main__":
    main()
