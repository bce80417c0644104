"""Command line: parse flags, run each task, show progress and a summary. No logic of its own.

    python -m chitchat_gen --task-paths task.yaml --num-outputs-to-generate 10 --restart
    python -m chitchat_gen --engine local -n 5 --restart
    python -m chitchat_gen trace --engine local --seed 3     # one conversation, stage by stage
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from .config import ConfigError, load_task
from .engines import LMError, check_engine, default_concurrency, make_chat
from .pipeline import generate
from .trace import make_printer
from .stats import dataset_stats, render_table, write_card
from .store import FINAL, FORMATTED, append, clear, close, log_run, open_store


COMMANDS = ("trace", "stats")


def build_parser(command: str = "generate") -> argparse.ArgumentParser:
    if command == "stats":
        parser = argparse.ArgumentParser(
            prog="python -m chitchat_gen stats",
            description="Figures of a dataset: turns, closing exchanges, patterns vs weights, duplicates, distinct-n.")
        parser.add_argument("path", metavar="PATH", help="a final_data.jsonl, or the output folder holding one")
        parser.add_argument("--task-paths", nargs=1, metavar="PATH",
                            help="the task file, to compare pattern picks with its weights")
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
        return parser
    if command == "trace":
        parser = argparse.ArgumentParser(
            prog="python -m chitchat_gen trace",
            description="Run ONE conversation and print every prompt, reply and stage decision. Writes no file.")
        parser.add_argument("--task-paths", nargs=1, default=["task.yaml"], metavar="PATH",
                            help="the task file (default: ./task.yaml)")
    else:
        parser = argparse.ArgumentParser(
            prog="python -m chitchat_gen",
            description="Generate persona-driven multi-turn chit-chat conversations with an LM.",
            epilog="Also: 'python -m chitchat_gen trace --help' (one conversation, stage by stage) and "
                   "'python -m chitchat_gen stats --help' (figures of a dataset).")
        parser.add_argument("--task-paths", nargs="+", default=["task.yaml"], metavar="PATH",
                            help="task file(s) to run, one after another (default: ./task.yaml)")
        parser.add_argument("-n", "--num-outputs-to-generate", type=int, default=10, metavar="N",
                            help="accepted conversations wanted per task (default: 10)")
        parser.add_argument("--restart", action="store_true",
                            help="delete this task's previous outputs and start from zero (default: resume)")
        parser.add_argument("--output-dir", default="output", metavar="DIR",
                            help="outputs go to DIR/<task_name>/ (default: output)")
        parser.add_argument("--shard", metavar="I/K", type=_shard,
                            help="generate shard I of K (1-based): this machine's share of N, in DIR/<task_name>/shard-I-of-K/")
        parser.add_argument("--quiet", action="store_true", help="no progress line")
    engine = parser.add_argument_group("engine (overrides the task file)")
    engine.add_argument("--engine", choices=["ollama", "openai", "local"])
    engine.add_argument("--model", help="model name (ollama, openai) or .gguf path (local)")
    engine.add_argument("--base-url", action="append", metavar="URL",
                        help="server URL; repeat or comma-separate to spread calls over several servers")
    engine.add_argument("--concurrency", type=int, metavar="K",
                        help="conversations in flight at once (default: 4 per Ollama server, 32 per OpenAI-style server, 1 local)")
    engine.add_argument("--seed", type=int, help="seed for persona, pattern and example sampling")
    engine.add_argument("--temperature", type=float)
    engine.add_argument("--max-tokens", type=int, help="cap on the tokens of each reply")
    parser.add_argument("--verbose", action="store_true", help="also print notes on ignored settings")
    return parser


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/K such as 2/4, got {text!r}")
    if not 1 <= index <= count:
        raise argparse.ArgumentTypeError(f"expected 1 <= I <= K, got {text!r}")
    return index, count


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "generate"
    args = build_parser(command).parse_args(argv)
    try:
        if command == "stats":
            return run_stats(args)
        if command == "generate" and args.num_outputs_to_generate < 1:
            raise ConfigError(f"--num-outputs-to-generate must be >= 1 (got {args.num_outputs_to_generate})")
        if args.concurrency is not None and args.concurrency < 1:
            raise ConfigError(f"--concurrency must be >= 1 (got {args.concurrency})")
        # Load every task first, so a broken second task file stops the run before any work.
        overrides = {"engine": args.engine, "model": args.model, "base_url": args.base_url,
                     "concurrency": args.concurrency, "seed": args.seed,
                     "temperature": args.temperature, "max_tokens": args.max_tokens}
        tasks = [load_task(path, **overrides) for path in args.task_paths]
        for note in (note for task in tasks for note in task["notes"] if args.verbose):
            print(f"note: {note}", file=sys.stderr)
        for task in tasks:
            run_trace(task) if command == "trace" else run_task(task, args)
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except LMError as exc:
        print(f"Error: the run stopped ({exc}): fix the cause, then run the same command without --restart "
              "to resume; everything accepted so far is kept", file=sys.stderr)
        _exit_now(1)
    except KeyboardInterrupt:
        print("\nInterrupted: accepted conversations are saved; run the same command without --restart to resume",
              file=sys.stderr)
        _exit_now(130)
    return 0


def _exit_now(code: int):
    """Exit without waiting for LM requests still in flight (their threads may sit in a long timeout)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_task(task: dict, args) -> None:
    n, seed_tag = args.num_outputs_to_generate, ""
    folder = Path(args.output_dir) / task["task_name"]
    if args.shard:
        # Shard I of K makes N // K conversations (one more for the first N % K shards), with its own seeds.
        index, count = args.shard
        n = n // count + (1 if index <= n % count else 0)
        folder, seed_tag = folder / f"shard-{index}-of-{count}", f"shard{index}/"
        if n == 0:
            print(f"shard {index}/{count} of {args.num_outputs_to_generate} conversations is empty: nothing to do")
            return
    store = open_store(folder)
    try:
        existing = 0 if args.restart else store["existing"]
        if existing >= n:
            print(f"{folder} already holds {existing} conversations (>= {n}): nothing to do "
                  "(use --restart to start again, or a larger -n)")
            return
        engine = task["engine"]
        check_engine(engine)
        totals = Counter()
        lock = threading.Lock()

        def on_usage(prompt_tokens, completion_tokens):
            with lock:
                totals["prompt_tokens"] += prompt_tokens
                totals["completion_tokens"] += completion_tokens

        chat = make_chat(engine, on_usage)
        if args.restart:
            clear(store)
        concurrency = engine["concurrency"] or default_concurrency(engine)
        stats = {}
        start = time.monotonic()
        ticker = None if args.quiet else _progress(stats, n - existing, start)
        try:
            # A resumed run with the same --seed must not replay the first run's personas and patterns.
            seed = None if task["seed"] is None else f"{task['seed']}/{seed_tag}{existing}"
            for record in generate(task, n - existing, chat=chat, seed=seed, concurrency=concurrency, stats=stats):
                append(store, record)
        finally:
            if ticker:
                ticker.set()
            # Also after a crash or Ctrl-C: the card and the run log describe what is on disk.
            runs = log_run(store, {
                "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": _command(),
                "engine": engine["type"], "model": engine["model"], "seed": task["seed"],
                "accepted": stats.get("accepted", 0), "dropped": dict(stats.get("dropped", {})),
                "calls": stats.get("calls", 0), "tokens": totals["prompt_tokens"] + totals["completion_tokens"],
                "seconds": round(time.monotonic() - start, 1)})
            write_card(folder, task, runs)
        _summary(task, stats, totals, existing, time.monotonic() - start, folder)
    finally:
        close(store)


def _command() -> str:
    return " ".join(["python -m chitchat_gen"] + [shlex.quote(a) for a in sys.argv[1:]])


def run_stats(args) -> int:
    path = Path(args.path)
    if path.is_dir():
        path = path / FINAL
    if not path.is_file():
        raise ConfigError(f"{path} not found: pass a final_data.jsonl or the output folder that holds one")
    task = load_task(args.task_paths[0]) if args.task_paths else None
    stats = dataset_stats(path, task)
    print(json.dumps(stats, indent=2) if args.json else render_table(stats))
    return 0


def run_trace(task: dict) -> None:
    check_engine(task["engine"])
    for _ in generate(task, 1, chat=make_chat(task["engine"]), concurrency=1, trace=make_printer()):
        pass


def _progress(stats: dict, wanted: int, start: float) -> threading.Event:
    """Print a progress line on stderr until the returned event is set."""
    done = threading.Event()
    tty = sys.stderr.isatty()

    def line():
        accepted, dropped = stats.get("accepted", 0), sum(stats.get("dropped", {}).values())
        elapsed = time.monotonic() - start
        rate = accepted / elapsed if elapsed else 0
        eta = f"{(wanted - accepted) / rate:.0f}s" if rate else "?"
        return (f"accepted {accepted}/{wanted}  dropped {dropped}  LM calls {stats.get('calls', 0)}  "
                f"{rate * 60:.1f}/min  ETA {eta}")

    def loop():
        while not done.wait(0.5 if tty else 10):
            print(("\r" + line()) if tty else line(), end="" if tty else "\n", file=sys.stderr, flush=True)
        if tty:
            print("\r" + line(), file=sys.stderr, flush=True)

    threading.Thread(target=loop, daemon=True).start()
    return done


def _summary(task, stats, totals, existing, seconds, folder) -> None:
    accepted = stats["accepted"]
    tokens = totals["prompt_tokens"] + totals["completion_tokens"]
    per = f" ({stats['calls'] / accepted:.1f} per accepted)" if accepted else ""
    tokens_per = f", {tokens / accepted:.0f} per accepted" if accepted else ""
    print(f"{task['task_name']}: {accepted} accepted"
          + (f" (+{existing} from earlier runs)" if existing else "")
          + f", {sum(stats['dropped'].values())} dropped, {stats['calls']} LM calls{per}, "
          f"{tokens} tokens ({totals['prompt_tokens']} prompt + {totals['completion_tokens']} completion{tokens_per}), "
          f"{seconds:.1f}s")
    for reason, count in stats["dropped"].most_common():
        print(f"  dropped {count}: {reason}")
    print(f"  {folder / FINAL}\n  {folder / FORMATTED}\n  {folder / 'README.md'} (dataset card)")
