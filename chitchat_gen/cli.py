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
from datetime import datetime, timezone
from pathlib import Path

from .config import ENGINE_FIELDS, TASK_FIELDS, ConfigError, load_task, spec_of, value_problem
from .engines import LMError, check_engine, default_concurrency, make_chat, make_pool
from .load import describe, report
from .pipeline import generate, new_stats
from .ray_executor import check_address, connect, disconnect, generate_on_ray
from .trace import make_printer
from .stats import dataset_stats, render_table, write_card
from .store import FINAL, FORMATTED, append, clear, close, count_existing, log_run, open_store


COMMANDS = ("trace", "stats")


def build_parser(command: str = "generate") -> argparse.ArgumentParser:
    if command == "stats":
        parser = _parser("stats", "Figures of a dataset: turns, closing exchanges, patterns vs weights, duplicates, distinct-n.")
        parser.add_argument("path", metavar="PATH", help="a final_data.jsonl, or the output folder holding one")
        parser.add_argument("--task-paths", nargs=1, metavar="PATH",
                            help="the task file, to compare pattern picks with its weights")
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
        return parser
    if command == "trace":
        parser = _parser("trace", "Run ONE conversation and print every prompt, reply and stage decision. Writes no file.")
        parser.add_argument("--task-paths", nargs=1, default=["task.yaml"], metavar="PATH",
                            help="the task file (default: ./task.yaml)")
    else:
        parser = _parser("", "Generate persona-driven multi-turn chit-chat conversations with an LM.")
        parser.epilog = ("Also: 'python -m chitchat_gen trace --help' (one conversation, stage by stage) and "
                         "'python -m chitchat_gen stats --help' (figures of a dataset).")
        parser.add_argument("--task-paths", nargs="+", default=["task.yaml"], metavar="PATH",
                            help="task file(s) to run, one after another (default: ./task.yaml)")
        parser.add_argument("-n", "--num-outputs-to-generate", type=_checked({"kind": "int", "low": 1}), default=10,
                            metavar="N", help="accepted conversations wanted per task (default: 10)")
        parser.add_argument("--restart", action="store_true",
                            help="delete this task's previous outputs and start from zero (default: resume)")
        parser.add_argument("--output-dir", default="output", metavar="DIR",
                            help="outputs go to DIR/<task_name>/ (default: output)")
        parser.add_argument("--shard", metavar="I/K", type=_shard,
                            help="generate shard I of K (1-based): this machine's share of N, in DIR/<task_name>/shard-I-of-K/")
        parser.add_argument("--ray", nargs="?", const="local", type=_ray_address, metavar="ADDRESS",
                            help="run the conversations on Ray workers (extra 'ray'): alone, a local Ray instance; "
                                 "'auto' or ray://HOST:10001 joins a cluster. The driver writes the files")
        parser.add_argument("--ray-workers", type=_checked({"kind": "int", "low": 1}), metavar="K",
                            help="Ray workers (actors), each running its share of --concurrency (default: one per node)")
        parser.add_argument("--quiet", action="store_true", help="no progress line")
    engine = parser.add_argument_group("engine (overrides the task file)")
    for spec in ENGINE_FIELDS + [spec_of(TASK_FIELDS, "seed")]:
        if spec["flag"] == "--concurrency" and command == "trace":
            continue  # one conversation: nothing to run concurrently
        if spec["flag"] == "--engine":
            engine.add_argument("--engine", choices=spec["kind"].split("|"), help=spec["doc"])
        elif spec["flag"]:
            engine.add_argument(spec["flag"], type=_checked(spec), help=spec["doc"],
                                action="append" if spec["kind"] == "urls" else "store",
                                metavar=spec["name"].upper())
    parser.add_argument("--verbose", action="store_true", help="also print notes on ignored settings")
    return parser


def _parser(command: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m chitchat_gen {command}".strip(), description=description)

    def error(message: str):
        # One rule for every flag mistake: one line, exit 2 (argparse's usage errors), the fix named.
        parser.exit(2, f"Error: {message}: see '{parser.prog} --help'\n")

    parser.error = error
    return parser


def _checked(spec: dict):
    """An argparse type for one setting of the config tables: the same checks as in task.yaml."""
    spec = {"kind": "str", "low": None, "high": None, "above": None, **spec, "default": ...}  # a flag is never null
    parse = {"int": int, "number": float}.get(spec["kind"], str)

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            value = text
        problem = value_problem(value, spec)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    return convert


def _ray_address(text: str) -> str:
    try:
        return check_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))


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
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if getattr(args, "ray_workers", None) and args.ray is None:
        parser.error("argument --ray-workers: only means something with --ray")
    try:
        if command == "stats":
            return run_stats(args)
        # Load every task first, so a broken second task file stops the run before any work.
        overrides = {"engine": args.engine, "model": args.model, "base_url": args.base_url,
                     "concurrency": getattr(args, "concurrency", None), "seed": args.seed,
                     "temperature": args.temperature, "max_tokens": args.max_tokens,
                     "max_rpm": args.max_rpm, "max_tpm": args.max_tpm}
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


def shard_plan(n: int, shard: tuple[int, int] | None) -> tuple[int, str]:
    """(conversations this run makes, its sub-folder, also its seed tag) for shard I of K or the whole job.

    Shard I of K makes N // K conversations, one more for the first N % K shards.
    """
    if not shard:
        return n, ""
    index, count = shard
    return n // count + (1 if index <= n % count else 0), f"shard-{index}-of-{count}"


def run_task(task: dict, args) -> None:
    n, part = shard_plan(args.num_outputs_to_generate, args.shard)
    folder = Path(args.output_dir) / task["task_name"] / part
    if n == 0:
        print(f"{part}: an empty share of {args.num_outputs_to_generate} conversations: nothing to do")
        return
    # subtle: everything that can fail at start-up is checked before the output folder is touched.
    existing = 0 if args.restart else count_existing(folder)
    if existing >= n:
        print(f"{folder} already holds {existing} conversations (>= {n}): nothing to do "
              "(use --restart to start again, or a larger -n)")
        return
    engine = check_engine(task["engine"])
    for problem in engine.get("unreachable", ()):
        print(f"note: {problem.split(': start it')[0]}: the other servers carry the run; it is tried again as it goes",
              file=sys.stderr)
    if args.ray:
        connect(args.ray)  # before the folder is touched: a missing ray or a silent cluster changes nothing
    stats, pool = new_stats(), None if args.ray else make_pool(engine)  # Ray workers hold their own pools
    chat = make_chat(engine, on_usage=_token_counter(stats), pool=pool)
    store = open_store(folder)
    try:
        for note in store["notes"]:
            print(f"note: {note}", file=sys.stderr)
        if args.restart:
            clear(store)
        existing = store["existing"]
        concurrency = engine["concurrency"] or default_concurrency(engine)
        start = time.monotonic()
        ticker = None if args.quiet else _progress(stats, pool, n - existing, start)
        try:
            # A resumed run with the same --seed must not replay the first run's personas and patterns.
            seed = None if task["seed"] is None else f"{task['seed']}/{part}/{existing}"
            records = (generate_on_ray(task, n - existing, engine=engine, workers=args.ray_workers, seed=seed,
                                       concurrency=concurrency, stats=stats) if args.ray else
                       generate(task, n - existing, chat=chat, seed=seed, concurrency=concurrency, stats=stats))
            for record in records:
                append(store, record)
        finally:
            if ticker:
                ticker.set()
            # Also after a crash or Ctrl-C: the card and the run log describe what is on disk.
            runs = log_run(store, {
                "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": _command(),
                "engine": engine["type"], "model": engine["model"], "seed": task["seed"],
                "accepted": stats["accepted"], "dropped": dict(stats["dropped"]), "calls": stats["calls"],
                "tokens": stats["prompt_tokens"] + stats["completion_tokens"],
                "seconds": round(time.monotonic() - start, 1), "endpoints": report(pool) if pool else []})
            write_card(folder, task, runs)
        _summary(task, stats, pool, existing, time.monotonic() - start, folder)
    finally:
        close(store)
        if args.ray:
            disconnect()


def _token_counter(stats: dict):
    """`on_usage` for make_chat: adds each call's tokens to the run's stats (from many threads)."""
    lock = threading.Lock()

    def on_usage(prompt_tokens: int, completion_tokens: int) -> None:
        with lock:
            stats["prompt_tokens"] += prompt_tokens
            stats["completion_tokens"] += completion_tokens

    return on_usage


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
    for _ in generate(task, 1, chat=make_chat(check_engine(task["engine"])), concurrency=1, trace=make_printer()):
        pass


def _progress(stats: dict, pool: dict | None, wanted: int, start: float) -> threading.Event:
    """Print a progress line on stderr until the returned event is set."""
    done = threading.Event()
    tty = sys.stderr.isatty()

    def line():
        accepted, dropped = stats["accepted"], sum(stats["dropped"].values())
        elapsed = time.monotonic() - start
        rate = accepted / elapsed if elapsed else 0
        eta = f"{(wanted - accepted) / rate:.0f}s" if rate else "?"
        return (f"accepted {accepted}/{wanted}  dropped {dropped}  LM calls {stats['calls']}  "
                f"{rate * 60:.1f}/min  ETA {eta}" + (f"  [{describe(report(pool))}]" if pool else ""))

    def loop():
        while not done.wait(0.5 if tty else 10):
            print(("\r" + line()) if tty else line(), end="" if tty else "\n", file=sys.stderr, flush=True)
        if tty:
            print("\r" + line(), file=sys.stderr, flush=True)

    threading.Thread(target=loop, daemon=True).start()
    return done


def _summary(task, stats, pool, existing, seconds, folder) -> None:
    accepted = stats["accepted"]
    tokens = stats["prompt_tokens"] + stats["completion_tokens"]
    per = f" ({stats['calls'] / accepted:.1f} per accepted)" if accepted else ""
    tokens_per = f", {tokens / accepted:.0f} per accepted" if accepted else ""
    print(f"{task['task_name']}: {accepted} accepted"
          + (f" (+{existing} from earlier runs)" if existing else "")
          + f", {sum(stats['dropped'].values())} dropped, {stats['calls']} LM calls{per}, "
          f"{tokens} tokens ({stats['prompt_tokens']} prompt + {stats['completion_tokens']} completion{tokens_per}), "
          f"{seconds:.1f}s")
    for reason, count in stats["dropped"].most_common():
        print(f"  dropped {count}: {reason}")
    for row in report(pool) if pool else ():
        answers = ", ".join(f"{n} x {status}" for status, n in sorted(row["answers"].items(), key=str))
        print(f"  {row['url']}: {row['calls']} calls ({answers}), limit {row['limit']}"
              + (f", paced at {row['pace_rpm']}/min" if row["pace_rpm"] else "") + f", mean latency {row['latency']:.2f}s")
    print(f"  {folder / FINAL}\n  {folder / FORMATTED}\n  {folder / 'README.md'} (dataset card)")
