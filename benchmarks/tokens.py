"""What a conversation costs in prompt text, and how much of it a server's prefix cache serves.

Runs the real CLI against the loopback fake server with its prefix cache on (tests/fake_lm.py:
vLLM-style, over the messages in 64-character blocks, kept for the whole run) and reports, per
accepted conversation: prompt characters, the share the cache served, the characters it did not
(what the server evaluates and a hosted API bills at full price), and LM calls; overall and by call
type. With `--baseline REV` the same run is made with the code of git revision REV (a temporary
`git worktree`, removed afterwards), each version with its own shipped task. Run by hand:

    python benchmarks/tokens.py                       # this checkout, N = 200
    python benchmarks/tokens.py --baseline b03846c    # and version 0.1, side by side
    python benchmarks/tokens.py -n 40 --json
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_lm import FakeServer  # noqa: E402

KINDS = ("scenario", "flow controller", "hint", "user", "assistant", "judge")


def kind_of(call: dict) -> str:
    """Which stage sent a call, from its prompt; reads this version's prompts and version 0.1's."""
    system = call["messages"][0]["content"] if call["messages"][0]["role"] == "system" else ""
    last = call["messages"][-1]["content"]
    schema = call["schema"] or {}
    if "eligible" in schema.get("properties", {}):
        return "flow controller"
    if "coherence" in schema.get("properties", {}):
        return "judge"
    if "short scenarios" in system:
        return "scenario"
    if "one-sentence instruction" in last:
        return "hint"
    if last.rstrip().endswith("Your message:"):
        return "user"
    return "assistant"


def run(source: Path, n: int, seed: int, concurrency: int) -> dict:
    """Run the CLI of the checkout at `source` with its own task; the figures per accepted conversation."""
    workdir = Path(tempfile.mkdtemp(prefix="chitchat_tokens_"))
    for name in ("task.yaml", "personas.jsonl", "seed_examples.jsonl"):
        shutil.copy(source / name, workdir / name)
    with FakeServer(models=["granite4:3b"], prefix_cache=True) as server:
        result = subprocess.run([sys.executable, "-m", "chitchat_gen", "-n", str(n), "--restart", "--quiet",
                                 "--seed", str(seed), "--engine", "openai", "--base-url", server.url,
                                 "--model", "granite4:3b", "--concurrency", str(concurrency)],
                                cwd=workdir, capture_output=True, text=True,
                                env={"PYTHONPATH": str(source), "PATH": "/usr/bin:/bin"})
    shutil.rmtree(workdir)
    if result.returncode != 0:
        raise SystemExit(f"the run of {source} failed:\n{result.stderr[-2000:]}")
    by_kind = collections.defaultdict(lambda: {"calls": 0, "chars": 0, "cached": 0})
    for call in server.cache_log:
        for row in (by_kind[kind_of(call)], by_kind["all"]):
            row["calls"] += 1
            row["chars"] += call["chars"]
            row["cached"] += call["cached"]
    return {kind: {"prompt_chars": round(row["chars"] / n), "cacheable": round(row["cached"] / row["chars"], 3),
                   "uncached_chars": round((row["chars"] - row["cached"]) / n), "calls": round(row["calls"] / n, 2)}
            for kind, row in by_kind.items()}


def baseline_checkout(revision: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="chitchat_baseline_")) / "src"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), revision],
                   check=True, capture_output=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=200, help="accepted conversations per version (default: 200)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--baseline", metavar="REV", help="also run git revision REV (e.g. b03846c, version 0.1)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    versions = {"this checkout": ROOT}
    if args.baseline:
        versions = {args.baseline: baseline_checkout(args.baseline), **versions}
    try:
        results = {name: run(source, args.n, args.seed, args.concurrency) for name, source in versions.items()}
    finally:
        for source in versions.values():
            if source != ROOT:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(source)], check=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"N = {args.n} accepted conversations, seed {args.seed}, prefix cache of 64-character blocks; per accepted conversation")
    print(f"{'version':<16}{'call type':<17}{'prompt chars':>13}{'cacheable':>11}{'uncached chars':>16}{'LM calls':>10}")
    for name, result in results.items():
        for kind in ("all", *KINDS):
            if kind in result:
                row = result[kind]
                print(f"{name:<16}{kind:<17}{row['prompt_chars']:>13,}{row['cacheable']:>11.2f}"
                      f"{row['uncached_chars']:>16,}{row['calls']:>10.2f}")


if __name__ == "__main__":
    main()
