"""Do we cope with the servers users really have? Runs the real CLI against loopback fake servers
(tests/fake_lm.py) that push back the way real ones do, and compares the wall time with the ideal
`useful calls / capacity`, where a server's capacity is slots / latency, capped by its rate limit.
Run by hand from the repo root (about 7 minutes for all nine on 2 cores):

    python benchmarks/load.py                              # every scenario
    python benchmarks/load.py --scenarios uneven,ratelimited
    python benchmarks/load.py --extra "--max-rpm 2400"     # extra CLI args, appended to every run
    python benchmarks/load.py --pythonpath /tmp/before     # measure another checkout of chitchat_gen

Scenarios (the CLI's defaults unless said; --restart --quiet --seed 1 -n N, model granite4:3b):
  uneven       two OpenAI-style servers, 16 slots each, latency 0.1 s and 0.4 s (one GPU 4x slower),
               both given with --base-url; --engine openai, N = 300. Ideal = calls / (160 + 40 per s).
  ratelimited  a hosted-style API: 40 requests/s (token bucket, 429 + Retry-After: 1 beyond it),
               no slot limit, latency 0.2 s; --engine openai, N = 60. Ideal = calls / 40.
  ratelimited-headers  the same API also stating its limit in OpenAI's x-ratelimit-* headers.
  smallqueue   Ollama with 1 slot and OLLAMA_MAX_QUEUE=2 (503 "server busy" beyond 1 + 2), latency
               0.1 s; --engine ollama --concurrency 8, N = 20. Ideal = calls x 0.1.
  baseline     one OpenAI-style server with 64 slots, latency 0.2 s, no pushback; --engine openai
               --concurrency 128 (2 x slots, as benchmarks/throughput.py runs it), N = 1,000.
               Ideal = calls x 0.2 / 64.
  faultfree    one OpenAI-style server with 32 slots, latency 0.2 s; --engine openai, N = 30.
  faults       the same server failing a seeded 30 % of chat calls with a 500 or a reset connection;
               printed with its wall time over faultfree's (run both: the target is that ratio).
  engines      two engines (the task's `engines:`): the default one on an OpenAI-style server with
               16 slots, latency 0.1 s, and the assistant's stage (lm/assistant/naive) on engine
               `strong`, its own server with 16 slots, latency 0.4 s (4x slower); --engine openai
               --concurrency 64, N = 300.
  engines-slots  the same two engines, the default one's server down to 4 slots: now it, not the
               assistant's, sets the pace; N = 150.

A server's spec may name its engine ("engine": "strong"); the others serve the default engine
(--base-url). Each engine's ideal is its calls / its servers' capacity; a run can be no faster
than its slowest engine's, so the row's ideal is the largest of them. Rows with several engines
print a line per engine: its calls, its ideal and wall / that ideal (1.0: its servers were busy
the whole run; more: they waited for the other engine's calls, which a conversation alternates with).

"calls" are the chat requests answered 200 (the work the servers did); 429/503 answers are the
waste, reported as their share of all chat answers. The ideal counts every 200, also those spent
on conversations later dropped: compare calls/acc (calls per accepted conversation, ~15 without
drops) to see that waste. Accepted and dropped come from the summary line
the CLI prints; when the run stops early (exit 1, no summary), accepted is counted in the output
file and dropped is unknown. The fake server is imported from this repo's tests/; --pythonpath
chooses only the chitchat_gen package under test.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_lm import FakeServer  # noqa: E402

SCENARIOS = {  # name: (N, engine, extra CLI args, FakeServer keyword arguments per server)
    "uneven": (300, "openai", [], [{"latency": 0.1, "slots": 16}, {"latency": 0.4, "slots": 16}]),
    "ratelimited": (60, "openai", [], [{"latency": 0.2, "rate": 40}]),
    "ratelimited-headers": (60, "openai", [], [{"latency": 0.2, "rate": 40, "ratelimit_headers": True}]),
    "smallqueue": (20, "ollama", ["--concurrency", "8"], [{"latency": 0.1, "slots": 1, "queue": 2}]),
    "baseline": (1000, "openai", ["--concurrency", "128"], [{"latency": 0.2, "slots": 64}]),
    "faultfree": (30, "openai", [], [{"latency": 0.2, "slots": 32}]),
    "faults": (30, "openai", [], [{"latency": 0.2, "slots": 32, "fault_share": 0.3, "fault_kinds": ("500", "reset")}]),
    "faults429": (30, "openai", [], [{"latency": 0.2, "slots": 32, "fault_share": 0.3,
                                     "fault_kinds": ("500", "reset", "429")}]),
    "engines": (300, "openai", ["--concurrency", "64"],
                [{"latency": 0.1, "slots": 16}, {"engine": "strong", "latency": 0.4, "slots": 16}]),
    "engines-slots": (150, "openai", ["--concurrency", "64"],
                      [{"latency": 0.1, "slots": 4}, {"engine": "strong", "latency": 0.4, "slots": 16}]),
}
DEFAULT_ENGINE = "default"
ASSISTANT_STAGE = "lm/assistant/naive"  # the stage a named engine serves in these scenarios
SUMMARY = re.compile(r": (\d+) accepted(?: \(\+\d+ from earlier runs\))?, (\d+) dropped, (\d+) LM calls")


def capacity(server: dict) -> float:
    """Calls per second a server can finish: slots / latency, capped by its rate limit."""
    slots = server.get("slots")
    by_slots = slots / server["latency"] if slots and server["latency"] else float("inf")
    return min(by_slots, server.get("rate") or float("inf"))


def engine_of(spec: dict) -> str:
    return spec.get("engine", DEFAULT_ENGINE)


def add_named_engines(task_file: Path, servers: list, specs: list[dict]) -> None:
    """Give the task each named engine of `specs` (OpenAI-style, on its servers) and the assistant's stage to it."""
    raw = yaml.safe_load(task_file.read_text())
    for server, spec in zip(servers, specs):
        if engine_of(spec) != DEFAULT_ENGINE:
            engine = raw.setdefault("engines", {}).setdefault(engine_of(spec), {"type": "openai", "model": "granite4:3b"})
            engine["base_url"] = [*engine.get("base_url", []), server.url]
            for stage in raw["iteration_stages"]:
                if stage["name"] == ASSISTANT_STAGE:
                    stage["engine"] = engine_of(spec)
    task_file.write_text(yaml.safe_dump(raw, sort_keys=False))


def run_scenario(name: str, pythonpath: Path, extra: list[str], n: int | None) -> dict:
    wanted, engine, args, specs = SCENARIOS[name]
    wanted = n or wanted
    workdir = Path(tempfile.mkdtemp(prefix="chitchat_load_"))
    for file in ("task.yaml", "personas.jsonl", "seed_examples.jsonl"):
        shutil.copy(ROOT / file, workdir / file)
    servers = [FakeServer(models=["granite4:3b"], **{k: v for k, v in spec.items() if k != "engine"}) for spec in specs]
    for server in servers:
        server.__enter__()
    add_named_engines(workdir / "task.yaml", servers, specs)
    try:
        default_urls = [server.url for server, spec in zip(servers, specs) if engine_of(spec) == DEFAULT_ENGINE]
        command = [sys.executable, "-m", "chitchat_gen", "-n", str(wanted), "--restart", "--quiet", "--seed", "1",
                   "--engine", engine, "--model", "granite4:3b",
                   *[arg for url in default_urls for arg in ("--base-url", url)], *args, *extra]
        start = time.monotonic()
        # A clean environment: no OPENAI_API_KEY or OLLAMA_HOST of the caller leaks into the run.
        result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=3600,
                                env={"PYTHONPATH": str(pythonpath), "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        seconds = time.monotonic() - start
    finally:
        for server in servers:
            server.__exit__()
    final = workdir / "output/public/examples/chit_chat/final_data.jsonl"
    written = sum(1 for _ in open(final)) if final.exists() else 0
    shutil.rmtree(workdir)
    summary = SUMMARY.search(result.stdout)
    answered = sum((server.answered for server in servers), start=collections.Counter())
    total = sum(answered.values())
    calls = answered[200]
    engines = {}  # name -> its servers' 200s, its ideal and wall / that ideal
    for server, spec in zip(servers, specs):
        used = engines.setdefault(engine_of(spec), {"calls_200": 0, "capacity": 0.0})
        used["calls_200"] += server.answered[200]
        used["capacity"] += capacity(spec)
    ideals = {}
    for engine_name, used in engines.items():
        ideals[engine_name] = used["calls_200"] / used.pop("capacity")
        used["ideal_s"] = round(ideals[engine_name], 1)
        used["ratio"] = round(seconds / ideals[engine_name], 2) if ideals[engine_name] else None
    ideal = max(ideals.values())  # a run is no faster than its slowest engine
    errors = [line for line in result.stderr.splitlines() if line.startswith(("Error", "Traceback"))]
    return {"scenario": name, "N": wanted, "exit": result.returncode, "written": written,
            "accepted": int(summary[1]) if summary else written, "dropped": int(summary[2]) if summary else None,
            "cli_lm_calls": int(summary[3]) if summary else None,
            "drop_reasons": dict((reason, int(count)) for count, reason in
                                 re.findall(r"^  dropped (\d+): (.*)$", result.stdout, re.M)),
            "requests_per_server": [len(server.chat_requests()) for server in servers],
            "answered": dict(sorted(answered.items())), "calls_200": calls,
            "calls_per_accepted": round(calls / written, 1) if written else None,
            "share_429": round(answered[429] / total, 3) if total else 0.0,
            "share_503": round(answered[503] / total, 3) if total else 0.0,
            "wall_s": round(seconds, 1), "ideal_s": round(ideal, 1), "ratio": round(seconds / ideal, 2) if ideal else None,
            "engines": engines, "error": errors[-1][:300] if errors else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, of: " + ", ".join(SCENARIOS))
    parser.add_argument("--extra", default="", metavar="ARGS", help="extra CLI args appended to every run")
    parser.add_argument("--pythonpath", type=Path, default=ROOT, metavar="DIR",
                        help="checkout whose chitchat_gen is run (default: this repo)")
    parser.add_argument("-n", type=int, help="override every scenario's N (quick checks)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    names = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}: choose from {', '.join(SCENARIOS)}")
    if not args.json:
        print(f"# chitchat_gen from {args.pythonpath.resolve()}; extra args: {args.extra or '(none)'}")
        print(f"{'scenario':<12}{'N':>6}{'exit':>5}{'accepted':>9}{'dropped':>8}{'requests/server':>17}"
              f"{'429 %':>7}{'503 %':>7}{'calls/acc':>10}{'wall s':>8}{'ideal s':>8}{'ratio':>7}", flush=True)
    walls = {}
    for name in names:
        row = run_scenario(name, args.pythonpath.resolve(), shlex.split(args.extra), args.n)
        walls[name] = row["wall_s"]
        if name.startswith("faults") and "faultfree" in walls:  # the target is a ratio of two runs side by side
            row["x_faultfree"] = round(row["wall_s"] / walls["faultfree"], 2)
        if args.json:
            print(json.dumps(row), flush=True)
            continue
        dropped = "?" if row["dropped"] is None else row["dropped"]
        print(f"{name:<12}{row['N']:>6}{row['exit']:>5}{row['accepted']:>9}{dropped:>8}"
              f"{'/'.join(map(str, row['requests_per_server'])):>17}{100 * row['share_429']:>7.1f}"
              f"{100 * row['share_503']:>7.1f}{row['calls_per_accepted']!s:>10}{row['wall_s']:>8}{row['ideal_s']:>8}{row['ratio']:>7}", flush=True)
        for reason, count in row["drop_reasons"].items():
            print(f"{'':<12}  dropped {count}: {reason}")
        if len(row["engines"]) > 1:
            for engine, used in row["engines"].items():
                print(f"{'':<12}  engine {engine}: {used['calls_200']} calls, ideal {used['ideal_s']} s, "
                      f"wall / ideal {used['ratio']}")
        if row["error"]:
            print(f"{'':<12}  {row['error']}")
        if "x_faultfree" in row:
            print(f"{'':<12}  wall / faultfree's wall: {row['x_faultfree']}")


if __name__ == "__main__":
    main()
