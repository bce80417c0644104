"""Command line: parse flags, run each task, show progress and a summary. No logic of its own.

    python -m chitchat_gen --task-paths task.yaml --num-outputs-to-generate 10 --restart
    python -m chitchat_gen --engine local -n 5 --restart
    python -m chitchat_gen trace --engine local --seed 3     # one conversation, stage by stage
    python -m chitchat_gen export output/public/examples/chit_chat --format sharegpt -o train.jsonl
    python -m chitchat_gen view output                        # runs and conversations in the browser
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import threading
import time
from pathlib import Path

from .errors import ConfigError, LMError, WriteError
from .export import FORMATS, export
from .lifecycle import DEFAULT_GRACE, run
from .plug import generate
from .ray_executor import check_address
from .redact import redact_command, redact_for
from .stages import engines_of
from .stats import dataset_stats, render_table
from .store import FINAL, FORMATTED
from .task import ENGINE_FIELDS, ENGINE_OVERRIDES, TASK_OVERRIDES, closest, did_you_mean, load_task, value_problem
from .trace import make_printer
from .view import serve, write_html

COMMANDS = ("trace", "stats", "export", "view")
SIGNAL_EXITS = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal's number, as shells report it
# The config rows' flags a command goes without: trace runs one conversation (nothing to run
# concurrently) and writes no file (no card to license).
NOT_FOR = {"trace": {"--concurrency", "--license"}}


def build_parser(command: str = "generate") -> argparse.ArgumentParser:
    """The parser of one command: stats, export and view have flags of their own; trace and
    generate (any other `command`) add the config rows' flags, the task file's overrides."""
    if command in OWN_FLAGS_ONLY:
        return OWN_FLAGS_ONLY[command]()
    parser = _trace_parser() if command == "trace" else _generate_parser()
    _add_config_flags(parser, command)
    return parser


def _stats_parser() -> argparse.ArgumentParser:
    """`stats PATH`: the figures of a dataset, as a table or JSON."""
    parser = _parser("stats", "Figures of a dataset: turns, closing exchanges, patterns vs weights, duplicates, distinct-n.")
    parser.add_argument("path", metavar="PATH", help="a final_data.jsonl, or the output folder holding one")
    parser.add_argument("--task-paths", nargs=1, metavar="PATH",
                        help="the task file, to compare pattern picks with its weights")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _export_parser() -> argparse.ArgumentParser:
    """`export OUTPUT_DIR --format F`: an output folder's conversations in a training format."""
    parser = _parser("export", "Write an output folder's conversations in another training format, streaming.")
    parser.add_argument("path", metavar="OUTPUT_DIR", help="an output folder (or its final_data.jsonl)")
    parser.add_argument("--format", required=True, choices=list(FORMATS),
                        help="openai: {\"messages\": [...]} for OpenAI fine-tuning; "
                             "sharegpt: {\"conversations\": [{\"from\", \"value\"}]}")
    parser.add_argument("--system", metavar="TEXT", help="a system message to put first in every conversation")
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE (default: stdout)")
    return parser


def _view_parser() -> argparse.ArgumentParser:
    """`view OUTPUT_DIR`: the local web page, served or written as one file."""
    parser = _parser("view", "See the runs and conversations of an output folder in the browser (a local page).")
    parser.add_argument("path", metavar="OUTPUT_DIR", help="an output folder (a run's --output-dir, or one task's folder)")
    parser.add_argument("--port", type=_checked({"kind": "int", "low": 0, "high": 65535}), default=8765,
                        help="port to serve on (default: 8765; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--open", action="store_true", help="open the page in your web browser")
    parser.add_argument("--html", metavar="FILE", help="write the page as one static file, data inlined, and exit")
    return parser


# The commands whose parser takes none of the config rows' flags.
OWN_FLAGS_ONLY = {"stats": _stats_parser, "export": _export_parser, "view": _view_parser}


def _trace_parser() -> argparse.ArgumentParser:
    """`trace`: one task file (the config rows' flags come after)."""
    parser = _parser("trace", "Run ONE conversation and print every prompt, reply and stage decision. Writes no file.")
    parser.add_argument("--task-paths", nargs=1, default=["task.yaml"], metavar="PATH",
                        help="the task file (default: ./task.yaml)")
    return parser


def _generate_parser() -> argparse.ArgumentParser:
    """The run itself: which tasks, how many, where, resume or restart, shards, Ray, the stop signal."""
    parser = _parser("", "Generate persona-driven multi-turn chit-chat conversations with an LM.")
    parser.epilog = ("Also: 'python -m chitchat_gen trace --help' (one conversation, stage by stage), "
                     "'python -m chitchat_gen stats --help' (figures of a dataset), "
                     "'python -m chitchat_gen export --help' (OpenAI / ShareGPT files), "
                     "'python -m chitchat_gen view --help' (runs and conversations in the browser).")
    parser.add_argument("--task-paths", nargs="+", default=["task.yaml"], metavar="PATH",
                        help="task file(s) to run, one after another (default: ./task.yaml)")
    parser.add_argument("-n", "--num-outputs-to-generate", type=_checked({"kind": "int", "low": 1}), default=10,
                        metavar="N", help="accepted conversations wanted per task (default: 10)")
    parser.add_argument("--restart", action="store_true",
                        help="delete this task's previous outputs and start from zero (default: resume)")
    parser.add_argument("--mix", action="store_true",
                        help="resume into a folder whose conversations another task made (other patterns, turn "
                             "bounds, personas, seed examples, prompts or stages); without it that is refused")
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
    parser.add_argument("--grace", type=_checked({"kind": "number", "low": 0}), default=DEFAULT_GRACE,
                        metavar="SECONDS", help="on SIGTERM or Ctrl-C, how long the conversations in flight "
                        f"may take to finish and be kept (default: {DEFAULT_GRACE:g}; a second signal stops at once)")
    return parser


def _add_config_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """--verbose, then one flag per config row that has one, in two groups (task, engine); the
    rows a command goes without (`NOT_FOR`) are left out."""
    parser.add_argument("--verbose", action="store_true", help="also print notes on ignored settings")
    for title, specs in (("task (overrides the task file)", TASK_OVERRIDES),
                         ("engine (overrides the task file)", ENGINE_OVERRIDES)):
        group = parser.add_argument_group(title)
        for key, spec in specs.items():
            if spec["flag"] and spec["flag"] not in NOT_FOR.get(command, ()):
                _add_flag(group, key, spec)
    group.add_argument("--engine-set", dest="engine_set", type=_engine_set, action="append", metavar="NAME.KEY=VALUE",
                       help="set a key of the task's engine NAME (one under `engines:`), e.g. "
                            "strong.base_url=http://gpu2:8000 or strong.model=my-model; repeat it for more "
                            "(the flags above set the default engine)")


def _add_flag(group, key: str, spec: dict) -> None:
    """The flag of one config row: its value checked as in the task file, its help the row's doc."""
    if "|" in spec["kind"]:
        group.add_argument(spec["flag"], dest=key, choices=spec["kind"].split("|"), help=spec["doc"])
    else:
        group.add_argument(spec["flag"], dest=key, type=_checked(spec), help=spec["doc"], metavar=key.upper(),
                           action="append" if spec["kind"] == "urls" else "store")


def _parser(command: str, description: str) -> argparse.ArgumentParser:
    return Parser(prog=f"python -m chitchat_gen {command}".strip(), description=description)


class Parser(argparse.ArgumentParser):
    """argparse, with one rule for every flag mistake: one line, exit 2 (argparse's usage errors), the fix named."""

    def error(self, message: str):
        self.exit(2, f"Error: {redact_for(message)}: see '{self.prog} --help'\n")

    def parse_args(self, args=None, namespace=None):
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            self.unknown(unknown[0])
        return parsed

    def unknown(self, word: str):
        """Exit on an argument no flag takes: a misspelt flag gets a did-you-mean, as a misspelt task-file key does."""
        if not word.startswith("-"):
            self.error(f"unexpected argument {word!r}")
        flag = word.split("=", 1)[0]
        guess = closest(flag, [option for action in self._actions for option in action.option_strings])
        if not guess:
            self.error(f"unknown flag {flag}")
        self.exit(2, f"Error: unknown flag {redact_for(flag)}: did you mean {guess}?\n")


def _checked(spec: dict):
    """An argparse type for one setting of the config tables: the same checks as in task.yaml."""
    spec = {"kind": "str", "low": None, "high": None, "above": None, "secret": False, **spec, "default": ...}  # a flag is never null
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


def _engine_set(text: str) -> tuple[str, str, object]:
    """--engine-set's NAME.KEY=VALUE, the value checked as the key's row checks it in task.yaml."""
    name, dot, rest = text.partition(".")
    key, equals, value = rest.partition("=")
    if not (name and dot and key and equals):
        raise argparse.ArgumentTypeError(f"expected NAME.KEY=VALUE (e.g. strong.base_url=http://gpu2:8000), got {text!r}")
    specs = {spec["name"]: spec for spec in ENGINE_FIELDS if spec["flag"]}  # api_key has no flag: shells keep history
    if key not in specs:
        raise argparse.ArgumentTypeError(f"{key}: not an engine key a flag may set{did_you_mean(key, specs)}; "
                                         f"known: {', '.join(specs)}")
    return name, key, _checked(specs[key])(value)


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
    try:
        code = _main(argv)
        sys.stdout.flush()  # subtle: a reader gone early (| head) shows here, not as a traceback at exit
        return code
    except BrokenPipeError:
        # The reader of stdout (head, less, grep -q) has what it wanted: stop quietly, as cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        _exit_now(141)  # 128 + SIGPIPE, what a shell reports for cat in the same place


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "generate"
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if getattr(args, "ray_workers", None) and args.ray is None:
        parser.error("argument --ray-workers: only means something with --ray")
    tasks = []
    try:
        if command == "stats":
            return run_stats(args)
        if command == "export":
            return run_export(args)
        if command == "view":
            return run_view(args)
        # Load every task first, so a broken second task file stops the run before any work.
        overrides = {key: getattr(args, key, None) for key in (*TASK_OVERRIDES, *ENGINE_OVERRIDES)}
        overrides["engines"] = {}
        for name, key, value in getattr(args, "engine_set", None) or ():
            overrides["engines"].setdefault(name, {})[key] = value
        tasks = [load_task(path, **overrides) for path in args.task_paths]
        for note in (note for task in tasks for note in task["notes"] if args.verbose):
            print(f"note: {note}", file=sys.stderr)
        for task in tasks:
            for name, engine in engines_of(task).items():
                if engine["api_key"]:
                    where = "engine" if name == "default" else f"engines.{name}"
                    print(f"note: {task['path']}: {where}.api_key: a key in a task file travels with it (shared, "
                          "committed): delete it and export OPENAI_API_KEY instead", file=sys.stderr)
        for task in tasks:
            if command == "trace":
                run_trace(task)
                continue
            stopped = run_task(task, args)["stopped"]
            if stopped in SIGNAL_EXITS:  # the later tasks are not started either
                print(f"Stopped by {stopped}: the conversations accepted are kept, with the card and a runs.jsonl "
                      "entry; run the same command without --restart to resume", file=sys.stderr)
                _exit_now(SIGNAL_EXITS[stopped])
    except ConfigError as exc:
        print(f"Error: {redact_for(str(exc), tasks)}", file=sys.stderr)
        _exit_now(1)  # a Ray join that did not answer may still hang in its thread
    except WriteError as exc:  # after the run's close: what was accepted before is kept
        print(f"Error: {redact_for(str(exc), tasks)}", file=sys.stderr)
        _exit_now(1)
    except LMError as exc:
        print(f"Error: the run stopped ({redact_for(str(exc), tasks)}): fix the cause, then run the same command without --restart "
              "to resume; everything accepted so far is kept", file=sys.stderr)
        _exit_now(1)
    except KeyboardInterrupt:
        print("\nInterrupted: accepted conversations are saved; run the same command without --restart to resume",
              file=sys.stderr)
        _exit_now(130)
    return 0


def _exit_now(code: int):
    """Exit without waiting for threads: LM requests still in flight (they may sit in a long timeout),
    a Ray join that never answered."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_task(task: dict, args) -> dict:
    """One task's run (lifecycle.py), with this process's progress line, notes and summary around it."""
    summary = run(task, args.num_outputs_to_generate, output_dir=args.output_dir, restart=args.restart, mix=args.mix,
                  shard=args.shard, ray=args.ray, ray_workers=args.ray_workers, grace=args.grace,
                  command=_command(), on_note=lambda text: print(f"note: {text}", file=sys.stderr),
                  progress=None if args.quiet else _progress)
    folder = Path(summary["folder"])
    if summary["nothing_to_do"]:
        if summary["wanted"] == 0:
            print(f"{folder.name}: an empty share of {args.num_outputs_to_generate} conversations: nothing to do")
            return summary
        print(f"{folder} already holds {summary['existing']} conversations (>= {summary['wanted']}): nothing to do "
              "(use --restart to start again, or a larger -n)")
        if args.license:
            print(f"note: --license is written by a run that generates: to set it now, write 'license: {args.license}' "
                  f"into the metadata block at the top of {folder / 'README.md'}", file=sys.stderr)
        return summary
    _summary(summary, task)
    return summary


def _command() -> str:
    return redact_command(sys.argv[1:])  # the card gets published: no credentials in it


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


def run_export(args) -> int:
    count = export(Path(args.path), args.format, args.system, Path(args.output) if args.output else None)
    if args.output:
        print(f"{count} conversations written to {args.output} ({args.format})", file=sys.stderr)
    return 0


def run_view(args) -> int:
    if args.html:
        written = write_html(Path(args.path), Path(args.html))
        print(f"{args.html}: {written} conversations from {args.path}, one static page")
        return 0
    serve(Path(args.path), args.host, args.port, args.open)
    return 0


def run_trace(task: dict) -> None:
    for _ in generate(task, 1, concurrency=1, trace=make_printer()):  # every engine checked first
        pass


def _progress(stats: dict, pools: dict, wanted: int):
    """Print a progress line on stderr until the returned function is called; `pools` is each HTTP
    engine's load control by name."""
    done, start = threading.Event(), time.monotonic()
    tty = sys.stderr.isatty()
    # When the latest acceptance was seen: at the loop's tick (0.5 s on a terminal, 10 s in a log),
    # close enough for a pace; only the loop's thread touches it.
    last = {"accepted": 0, "elapsed": 0.0}

    def line():
        accepted, dropped = stats["accepted"], sum(stats["dropped"].values())
        elapsed = time.monotonic() - start
        if accepted != last["accepted"]:
            last.update(accepted=accepted, elapsed=elapsed)
        rate = accepted / elapsed if elapsed else 0
        left = eta(wanted, accepted, last["elapsed"], elapsed - last["elapsed"])
        # subtle: LM calls are the pipeline's; a server's requests (in the brackets) count each HTTP
        # attempt, so a call retried after a 500 or sent again after a 429 is one call and several requests.
        return (f"accepted {accepted}/{wanted}  dropped {dropped}  LM calls {stats['calls']}  "
                f"{rate * 60:.1f} accepted/min  ETA {'?' if left is None else f'{left:.0f}s'}"
                + "".join(f"  [{'' if len(pools) == 1 else name + ': '}{pool.describe()}]" for name, pool in pools.items()))

    def loop():
        while not done.wait(0.5 if tty else 10):
            print(("\r" + line()) if tty else line(), end="" if tty else "\n", file=sys.stderr, flush=True)
        if tty:
            print("\r" + line(), file=sys.stderr, flush=True)

    threading.Thread(target=loop, daemon=True).start()
    return done.set


def eta(wanted: int, accepted: int, elapsed_at_last: float, since_last: float) -> float | None:
    """Seconds left: the pace up to the latest accepted conversation, counted down since; None: unknown.

    subtle: recomputed only when a conversation is accepted, then counted down to 0. The plain
    (wanted - accepted) / (accepted / elapsed) climbs all the while the run waits for the next
    acceptance (elapsed grows, accepted does not): with a slow model, a minute of "the run is
    falling behind" between any two conversations. Before the first acceptance it is None ("?"):
    neither the LM calls a conversation takes nor the share dropped is known until one is kept,
    and the LM call count, live, shows the run moving meanwhile.
    """
    if not accepted:
        return None
    return max(0.0, elapsed_at_last / accepted * (wanted - accepted) - since_last)


def _prices(engine: dict) -> str:
    return ", ".join(f"{engine[key]:g} {label}" for key, label in (("price_in", "in"), ("price_cached", "cached"),
                                                                   ("price_out", "out")) if engine[key] is not None)


def _summary(summary: dict, task: dict) -> None:
    accepted, existing, calls = summary["accepted"], summary["existing"], summary["calls"]
    tokens = summary["prompt_tokens"] + summary["completion_tokens"]
    per = f" ({calls / accepted:.1f} per accepted)" if accepted else ""
    tokens_per = f", {tokens / accepted:.0f} per accepted" if accepted else ""
    print(f"{summary['task_name']}: {accepted} accepted"
          + (f" (+{existing} from earlier runs)" if existing else "")
          + f", {sum(summary['dropped'].values())} dropped, {calls} LM calls{per}, "
          f"{tokens} tokens ({summary['prompt_tokens']} prompt, {summary['cached_tokens']} of them cached, "
          f"+ {summary['completion_tokens']} completion{tokens_per}), {summary['seconds']:.1f}s")
    cost, engines = summary["cost_usd"], engines_of(task)
    if cost is not None:
        prices = _prices(task["engine"]) if len(engines) == 1 else "each engine's (below)"
        print(f"  cost: {cost:.4f} USD" + (f" ({cost / accepted:.6f} per accepted)" if accepted else "")
              + f" at USD per million tokens: {prices}")
    if len(engines) > 1:
        for name, used in summary["engines"].items():
            print(f"  engine {name} ({used['type']} {used['model']}; {', '.join(used['stages']) or 'no stage'}): "
                  f"{used['calls']} LM calls, {used['prompt_tokens'] + used['completion_tokens']} tokens "
                  f"({used['prompt_tokens']} prompt, {used['cached_tokens']} cached, + {used['completion_tokens']} "
                  "completion)" + ("" if used["cost_usd"] is None else
                                   f", {used['cost_usd']:.4f} USD at {_prices(engines[name])}"))
    for reason, count in collections.Counter(summary["dropped"]).most_common():
        print(f"  dropped {count}: {reason}")
    for row in summary["endpoints"]:
        answers = ", ".join(f"{n} x {status}" for status, n in sorted(row["answers"].items(), key=str))
        print(f"  {row['url']}" + (f" (engine {row['engine']})" if len(engines) > 1 else "")
              + f": {row['calls']} requests ({answers}), limit {row['limit']}"
              + (f", paced at {row['pace_rpm']}/min" if row["pace_rpm"] else "") + f", mean latency {row['latency']:.2f}s")
    folder = Path(summary["folder"])
    print(f"  {folder / FINAL}\n  {folder / FORMATTED}\n  {folder / 'README.md'} (dataset card)")
