"""One run, start to end, for the CLI, the library and Ray alike.

    from chitchat_gen import run
    summary = run("task.yaml", 10, engine="local", seed=1)
    print(summary["accepted"], summary["folder"], summary["stopped"])

Everything that can fail at start-up (the task, the engine, the Ray cluster) is checked before
the output folder is touched. Then: lock the folder and repair it, resume (or `restart`), make
conversations on threads or on Ray until the folder holds N, and close. Every way a run ends
goes through that one close, which leaves the two files in step and writes a runs.jsonl entry
saying how the run ended, then the dataset card:

    all made         stopped None
    nothing to do    the folder is repaired and its card rewritten; no entry (nothing was run)
    a signal         SIGTERM or SIGINT: no new conversations; those in flight get `grace` seconds
                     to finish and be kept; a second signal ends the wait
    a failed write   disk full, quota, size limit, I/O error: WriteError after the close
    a hopeless LM    every conversation failing or dropped: LMError after the close
"""

from __future__ import annotations

import collections
import hashlib
import json
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import plug
from .card import model_name, run_cost, write_card
from .errors import ConfigError, LMError, WriteError
from .extra_stages import OPENERS_KEPT
from .gates import language_note, reviewer
from .pipeline import COUNTS, SCENARIOS_KEPT, new_control, new_stats
from .ratelimit import concurrency_of
from .ray_executor import connect, disconnect, generate_on_ray
from .record import read_jsonl
from .redact import redact_for
from .stages import DEFAULT_ENGINE, engines_of
from .store import FINAL, append, clear, close, count_existing, log_run, open_store, read_runs, tail_offset, timestamp
from .task import load_task

DEFAULT_GRACE = 10.0  # seconds the conversations in flight get to finish after a stop signal


def run(task: dict | str | Path, n: int, *, output_dir: str | Path = "output", restart: bool = False,
        mix: bool = False, shard: tuple[int, int] | None = None, ray: str | None = None,
        ray_workers: int | None = None, grace: float = DEFAULT_GRACE, chat=None, command: str | None = None,
        on_note=None, progress=None, **overrides) -> dict:
    """Make the folder `output_dir/<task_name>/` hold `n` conversations; return the run's summary.

    `task` is a task file's path or a task from `load_task`; `overrides` are the CLI's long
    options with underscores (`engine`, `model`, `base_url`, `seed`, `concurrency`, ...), for a
    path only (give a loaded task's to `load_task`). A folder whose conversations another task
    made (`makings` differ) is refused unless `mix`. `ray` is an address ("local", "auto",
    "ray://HOST:10001") to run on Ray workers. `shard=(i, k)` makes this machine's share of `n`.
    `chat` is your own LM function (as for `generate`) instead of the task's engine.
    `on_note(text)` hears what the run noticed (repairs, a server down); `progress(stats, pools,
    wanted)` is called once the run starts and returns a function called when it ends.
    The summary: folder, wanted, existing (before), accepted, dropped ({reason: count}), calls,
    prompt_tokens, completion_tokens, cached_tokens, cost_usd (None without prices), seconds, seed,
    engine, model, stopped (None, "SIGTERM",
    "SIGINT", or the error that ended the run), nothing_to_do, notes, endpoints, and engines (the
    same figures for each of the task's engines by name, with its model and stages).
    """
    task = _loaded(task, overrides)
    command = command or f"chitchat_gen.run({task['path']!r}, {n})"  # the CLI passes its own command line
    wanted, part = shard_plan(n, shard)
    folder = Path(output_dir) / task["task_name"] / part
    notes: list[str] = []

    def note(text: str) -> None:
        text = redact_for(text, [task])
        notes.append(text)
        if on_note:
            on_note(text)

    summary = _new_summary(task, folder, wanted, notes)
    if wanted == 0:
        return {**summary, "nothing_to_do": True}
    if text := language_note(task):
        note(text)
    reviewer(task)  # a bad `quality:` section is refused here, before the folder is touched
    # subtle: everything that can fail at start-up is checked before the output folder is touched.
    existing = 0 if restart else count_existing(folder)
    if existing >= wanted:
        return {**summary, **_tidy(folder, task, note), "nothing_to_do": True}
    engines = _checked_engines(task, folder, existing, chat, mix, note)
    if ray:
        connect(ray)  # before the folder is touched: a missing ray or a silent cluster changes nothing
    options = RunOptions(wanted=wanted, part=part, folder=folder, restart=restart, ray=ray, ray_workers=ray_workers,
                         grace=grace, chat=chat, command=command, progress=progress)
    try:
        return _generate(task, engines, summary, note, options)
    finally:
        if ray:
            disconnect()


def _new_summary(task: dict, folder: Path, wanted: int, notes: list[str]) -> dict:
    """A run's summary before it makes anything: every key `run` documents, its figures at zero."""
    return {"task_name": task["task_name"], "folder": str(folder), "wanted": wanted, "existing": 0,
            "accepted": 0, "dropped": {}, "calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0,
            "cost_usd": None,
            "seconds": 0.0, "seed": None, "engine": None, "model": None, "stopped": None, "nothing_to_do": False,
            "notes": notes, "endpoints": [], "engines": {}}


def _checked_engines(task: dict, folder: Path, existing: int, chat, mix: bool, note) -> dict:
    """The engines this run uses by name, checked (a start-up check: before the folder is touched).

    A resume into a folder another task made is refused unless `mix`; another engine or model
    than the folder's last run is allowed, and said, as is a server down among several.
    """
    earlier = _last_made(folder) if existing else None
    if earlier and not mix:
        _same_makings(folder, existing, earlier, task)
    # Your own chat function stands for every engine: nothing to check, and the run log names it.
    engines = plug.checked_engines(task) if chat is None else {
        name: {**engine, "type": "function", "model": getattr(chat, "__name__", "chat")}
        for name, engine in engines_of(task).items()}
    if earlier:
        before = {name: (e["type"], e["model"]) for name, e in earlier.get("engines", {}).items()} or \
            {DEFAULT_ENGINE: (earlier["engine"], earlier["model"])}
        for name, engine in engines.items():
            now = (engine["type"], _model(engine, task, name, chat))
            if name in before and before[name] != now:
                note(f"{folder}'s conversations so far were made with {' '.join(map(str, before[name]))}"
                     f"{_named(name)}, this run's with {' '.join(map(str, now))}: the dataset holds both "
                     "(runs.jsonl and the card name each run's)")
    for name, engine in engines.items():
        for problem in engine.get("unreachable", ()):
            note(f"{problem.split(': start it')[0]}{_named(name)}: the other servers carry the run; it is tried "
                 "again as it goes")
    return engines


def _named(name: str) -> str:
    """How a note names an engine: nothing for the default one, " (engine NAME)" for another."""
    return "" if name == DEFAULT_ENGINE else f" (engine {name})"


@dataclass
class RunOptions:
    """What `run` settled before the folder is touched, for `_generate`: what to make, where, and how.

    `wanted`: conversations this run's folder should hold (its shard's share); `part`: the shard's
    sub-folder ("" for the whole job), also its seed tag; `chat`: the caller's own LM function, or
    None for the task's engine; `command`: how the run was asked for, for runs.jsonl; `progress`:
    as for `run`. The rest are `run`'s arguments of the same names.
    """

    wanted: int
    part: str
    folder: Path
    restart: bool = False
    ray: str | None = None
    ray_workers: int | None = None
    grace: float = DEFAULT_GRACE
    chat: Callable | None = None
    command: str = ""
    progress: Callable | None = None


def _generate(task: dict, engines: dict, summary: dict, note, options: RunOptions) -> dict:
    """Open the folder, make the conversations into it, and close it however the run ends (a
    signal, a failed write, a hopeless LM); return `summary` with the run's figures."""
    # Ray workers hold their own load control
    stats, pools = new_stats(), {} if options.ray or options.chat else plug.make_pools(engines)
    chat = options.chat or plug.make_chats(engines, lambda: stats, pools)
    control, caught = new_control(), []
    restore = _drain_on_signals(control, caught, options.grace)
    try:
        store = open_store(options.folder)
    except BaseException:
        restore()
        raise
    # The run's seed: the task's (--seed, `seed:`), else one drawn now; either way recorded, so
    # `--seed S` on a fresh folder makes this run again.
    seed = task["seed"] if task["seed"] is not None else random.SystemRandom().randrange(2**31)
    start, ended, stop_progress = time.monotonic(), None, None
    existing = written = 0  # written: accepted and on disk (a failed write is in neither file)
    try:
        for text in store["notes"]:
            note(text)
        if options.restart:
            clear(store)
        existing = store["existing"]
        if options.progress:
            stop_progress = options.progress(stats, pools, options.wanted - existing)
        try:
            records = _conversations(task, engines, chat, options, seed, existing, stats, control)
            try:
                for record in records:
                    append(store, record)
                    written += 1
            finally:
                records.close()  # the in-flight conversations stop at their next LM call
        finally:
            if stop_progress:
                stop_progress()
    except BaseException as exc:  # every end goes through the close below; the caller sees the error
        ended = str(exc) if isinstance(exc, (WriteError, LMError)) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, WriteError):
            note = _silent  # the close meets the same full disk: the error's one line says it all
        raise
    finally:
        restore()
        if caught and not ended:
            ended = signal.Signals(caught[0]).name
        summary.update(existing=existing, accepted=written, **_figures(task, engines, options.chat, stats, pools),
                       seconds=round(time.monotonic() - start, 1), seed=seed,
                       stopped=ended and redact_for(ended, [task]))
        _close(store, task, summary, options.command, note)
    return summary


def _conversations(task: dict, engines: dict, chat, options: RunOptions, seed: int, existing: int, stats: dict,
                   control: dict):
    """The accepted records still wanted, as they complete: on threads, or on Ray workers.

    `chat` is the run's (the caller's own, or each engine's client by name); Ray workers build
    their own clients unless the caller gave one. As many conversations are in flight as the
    default engine takes (`engine.concurrency`, or its default).
    """
    # subtle: a resumed run with the same seed must not replay the first run's personas and patterns.
    derived = f"{seed}/{options.part}/{existing}"
    # The duplicate checks also know what earlier runs wrote (bounded: the latest on disk,
    # read from the file's end).
    final = options.folder / FINAL
    latest = tail_offset(final, max(SCENARIOS_KEPT, OPENERS_KEPT)) if existing else 0
    on_disk = read_jsonl(final, latest) if existing else ()
    memory = plug.new_memory(value for _, _, value, _ in on_disk)
    own_chat, left, engine = options.chat, options.wanted - existing, engines[DEFAULT_ENGINE]
    concurrency = concurrency_of(engine) if not own_chat else engine["concurrency"] or 1
    if options.ray:
        return generate_on_ray(task, left, chat=own_chat, engines=None if own_chat else engines,
                               workers=options.ray_workers, seed=derived, concurrency=concurrency, stats=stats,
                               memory=memory, control=control)
    return plug.generate(task, left, chat=chat, seed=derived, concurrency=concurrency, stats=stats, memory=memory,
                         control=control)


def _figures(task: dict, engines: dict, own_chat, stats: dict, pools: dict) -> dict:
    """The summary's figures from the run's stats and load control: drops, calls, tokens, cost, the
    models, endpoints; and the same for each engine by name, with the stages it served."""
    dropped = collections.Counter()  # reasons that differed only in a secret add up
    for reason, count in stats["dropped"].items():
        dropped[redact_for(reason, [task])] += count
    stages = [cfg for key in ("initialization_stages", "iteration_stages", "finalization_stages") for cfg in task[key]]
    each = {}
    for name, engine in engines.items():
        counts = stats["engines"].get(name, dict.fromkeys(COUNTS, 0))
        endpoints = [{**row, "engine": name} for row in pools[name].report()] if name in pools else []
        each[name] = {"type": engine["type"], "model": _model(engine, task, name, own_chat), **counts,
                      "cost_usd": run_cost(counts, engine), "endpoints": endpoints,
                      "stages": [cfg["name"] for cfg in stages if cfg.get("engine", DEFAULT_ENGINE) == name]}
    costs = [e["cost_usd"] for e in each.values() if e["cost_usd"] is not None]
    default = each[DEFAULT_ENGINE]
    return {"dropped": dict(dropped), **{key: stats[key] for key in COUNTS},
            "cost_usd": round(sum(costs), 6) if costs else None, "engine": default["type"], "model": default["model"],
            "endpoints": [row for e in each.values() for row in e["endpoints"]], "engines": each}


def _model(engine: dict, task: dict, name: str, chat) -> str | None:
    asked = engines_of(task)[name]["model"]
    return engine["model"] if chat else model_name(engine["type"], asked, engine["model"])


# What makes a conversation, part by part: a resume whose task differs in one of them would mix
# two datasets in one folder. Another engine or model is allowed (and said), so the settings that
# follow the engine by default are left out: reply caps, judge_eligibility and generate_hint.
MAKING_STAGE_KEYS_LEFT_OUT = {"where", "persona_store", "patterns", "termination_patterns", "judge_eligibility",
                              "generate_hint", "max_tokens", "engine"}


def makings(task: dict) -> dict:
    """Each part of what makes the task's conversations, as a short hash (runs.jsonl keeps them)."""
    stages = [(key, [{k: v for k, v in s.items() if k not in MAKING_STAGE_KEYS_LEFT_OUT} for s in task[key]])
              for key in ("initialization_stages", "iteration_stages", "finalization_stages")]
    flows = [(s["patterns"], s["termination_patterns"]) for s in task["iteration_stages"]
             if s["name"] == "lm/flow_controller"]
    parts = {"patterns": flows, "turn bounds": [task["min_turns"], task["max_turns"], task["close_at_max_turns"]],
             "personas": task["personas"], "seed examples": task["seed_scenarios"], "prompts": task["prompts"],
             "stages": stages}
    return {part: hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]
            for part, value in parts.items()}


def _last_made(folder: Path) -> dict | None:
    """The latest runs.jsonl entry that says what made its conversations (older versions did not)."""
    return next((entry for entry in reversed(read_runs(folder)) if isinstance(entry.get("makings"), dict)), None)


def _same_makings(folder: Path, existing: int, earlier: dict, task: dict) -> None:
    """ConfigError when the folder's conversations were made by a task that differs from `task`."""
    differ = [part for part, digest in makings(task).items() if earlier["makings"].get(part) != digest]
    if differ:
        raise ConfigError(f"{folder} holds {existing} conversations made with other {', '.join(differ)} than "
                          f"{task['path']} gives: a resume would mix two datasets: start again with --restart, "
                          "write elsewhere with --output-dir, or add to them anyway with --mix")


def _silent(text: str) -> None:
    pass


def _close(store: dict, task: dict, summary: dict, command: str, note) -> None:
    """The one close: a runs.jsonl entry saying how the run ended, the card, the lock released.

    After a failed write the disk may have no room for either: each is tried, and what cannot
    be written is a note (the data files are already in step; the card is replaced whole or kept).
    """
    entry = {"date": timestamp(), "command": command,
             "engine": summary["engine"], "model": summary["model"], "seed": summary["seed"],
             "wanted": summary["wanted"] - summary["existing"], "accepted": summary["accepted"],
             "dropped": summary["dropped"], "calls": summary["calls"],
             "tokens": summary["prompt_tokens"] + summary["completion_tokens"],
             **{key: summary[key] for key in ("prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd")},
             "seconds": summary["seconds"],
             "stopped": summary["stopped"], "endpoints": summary["endpoints"], "engines": summary["engines"],
             "makings": makings(task)}
    try:
        try:
            runs = log_run(store, entry)
        except WriteError as exc:
            note(f"no runs.jsonl entry for this run: {exc}")
            runs = read_runs(store["folder"]) + [entry]
        _card(store["folder"], task, runs, note)
    finally:
        close(store)


def _card(folder: Path, task: dict, runs: list[dict], note) -> None:
    try:
        write_card(folder, task, runs)
    except OSError as exc:
        note(f"the dataset card was not updated ({exc.strerror or exc}): the next run rewrites it")


def _tidy(folder: Path, task: dict, note) -> dict:
    """Nothing to make: repair the folder and rewrite its card as any run does; the summary's figures."""
    store = open_store(folder)
    try:
        for text in store["notes"]:
            note(text)
        runs = read_runs(folder)
        if runs:  # a folder no run logged (made by hand) has no card to rewrite
            _card(folder, task, runs, note)
        return {"existing": store["existing"]}
    finally:
        close(store)


def _drain_on_signals(control: dict, caught: list, grace: float):
    """On SIGTERM or SIGINT: drain (no new conversations, `grace` seconds for those in flight);
    on a second: end the wait now. Returns the function that puts the old handlers back.

    Only the main thread may set handlers: from another thread (a notebook's worker, a server),
    signals keep their old meaning.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_signal(signum, frame):
        caught.append(signum)
        control["drain_until"] = time.monotonic() + (grace if len(caught) == 1 else 0)

    wanted = [getattr(signal, name) for name in ("SIGTERM", "SIGINT") if hasattr(signal, name)]
    old = {signum: signal.signal(signum, on_signal) for signum in wanted}

    def restore():
        for signum, handler in old.items():
            signal.signal(signum, handler)
    return restore


def _loaded(task, overrides: dict) -> dict:
    if isinstance(task, dict):
        if overrides:
            raise ConfigError(f"run(): {', '.join(sorted(overrides))}: with a loaded task, give overrides to "
                              "load_task (or pass the task file's path to run)")
        return task
    return load_task(task, **overrides)


def shard_plan(n: int, shard: tuple[int, int] | None) -> tuple[int, str]:
    """(conversations this run makes, its sub-folder, also its seed tag) for shard I of K or the whole job.

    Shard I of K makes N // K conversations, one more for the first N % K shards.

    >>> shard_plan(10, (1, 3)), shard_plan(10, (3, 3)), shard_plan(10, None)
    ((4, 'shard-1-of-3'), (3, 'shard-3-of-3'), (10, ''))
    """
    if not shard:
        return n, ""
    index, count = shard
    return n // count + (1 if index <= n % count else 0), f"shard-{index}-of-{count}"
