"""The loop: run one conversation through the stages, and run many of them at once.

    task = load_task("task.yaml")
    for record in generate(task, 3, chat=my_chat, seed=1):
        print(record["conversation_id"], len(record["steps"]))

`generate` writes nothing; the CLI (cli.py) writes what it yields with store.py.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import TypedDict

from .chat import make_chat
from .errors import ConfigError, LMError, NoAnswer
from .record import last_step, messages, new_record, turns
from .stages import DEFAULT_ENGINE, STAGES, engines_of


def run_conversation(task: dict, ctx: dict) -> tuple[dict | None, str | None]:
    """Return (record, None) when accepted, or (None, drop reason)."""
    record = new_record(task["task_name"])
    try:
        reason = run_stages(task["initialization_stages"], record, ctx)
        for turn in range(1, task["max_turns"] + 1):
            if reason:
                break
            ctx["turn"] = turn
            reason = run_stages(task["iteration_stages"], record, ctx)
            flow = last_step(record, "flow_controller")
            if flow and flow["terminate"]:
                break  # the closing exchange was this turn's user and assistant messages
        ctx["turn"] = None
        # The finalization stages (the judge) see only conversations that could be kept.
        reason = reason or unacceptable(task, record) or run_stages(task["finalization_stages"], record, ctx)
    except NoAnswer:
        raise  # no other conversation would fare better: the driver ends the run
    except LMError as exc:
        reason = f"LM call failed: {exc}"
    if ctx.get("trace"):
        ctx["trace"]("done", conversation_id=record["conversation_id"], turns=turns(record["steps"]), drop=reason)
    return (None, reason) if reason else (record, None)


def unacceptable(task: dict, record: dict) -> str | None:
    """Why a finished conversation cannot be kept: an empty message, or turns outside the bounds."""
    if any(not m["content"].strip() for m in messages(record)):
        return "empty message"
    if not task["min_turns"] <= turns(record["steps"]) <= task["max_turns"]:
        return f"{turns(record['steps'])} turns, outside min_turns..max_turns"
    return None


def run_stages(stages: list[dict], record: dict, ctx: dict) -> str | None:
    """Run stages in order; return the drop reason of the first stage that drops."""
    for cfg in stages:
        ctx["stage"] = cfg
        if "chats" in ctx:  # the stage's engine answers its calls
            ctx["chat"] = ctx["chats"][cfg.get("engine", DEFAULT_ENGINE)]
        before = len(record["steps"])
        result = STAGES[cfg["name"]](record, ctx)
        drop = result if isinstance(result, str) else None
        if ctx.get("trace"):
            ctx["trace"]("stage", stage=cfg["name"], turn=ctx.get("turn"), steps=record["steps"][before:], drop=drop)
        if drop:
            return f"{cfg['name']}: {drop}"
    return None


class Figures(TypedDict):
    """The figures of a run, read by the progress line, the summary, the run log and the card.

    accepted, dropped ({reason: count}), calls (as each ends, failed ones too: `counted`) and the
    tokens the servers report (plug.usage_counter; cached: served by the prefix cache), in all and
    again by engine name in `engines` ("default" for `engine:`).
    """

    accepted: int
    dropped: collections.Counter
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    engines: dict


USAGE = ("prompt_tokens", "completion_tokens", "cached_tokens")  # the order chat's on_usage gives them in
COUNTS = ("calls", *USAGE)  # what is counted for the run and for each engine
# subtle: `+=` on a dict item is not atomic across threads, and several engines' chats count into one total.
FIGURES_LOCK = threading.Lock()


def new_stats() -> Figures:
    return Figures(accepted=0, dropped=collections.Counter(), calls=0, prompt_tokens=0, completion_tokens=0,
                   cached_tokens=0, engines={})


def add_counts(figures: dict, engine: str, counts: dict) -> None:
    """Add `counts` (any of COUNTS) to the run's totals and to `engine`'s own.

    >>> figures = new_stats(); add_counts(figures, "strong", {"calls": 2, "prompt_tokens": 90})
    >>> figures["calls"], figures["engines"]["strong"]["prompt_tokens"]
    (2, 90)
    """
    with FIGURES_LOCK:
        own = figures["engines"].setdefault(engine, dict.fromkeys(COUNTS, 0))
        for key, value in counts.items():
            figures[key] += value
            own[key] += value


def counted(chat, figures: dict, stop: threading.Event | None = None, engine: str = DEFAULT_ENGINE):
    """`chat` that counts each call in figures["calls"] (and `engine`'s) as it ends, and raises
    LMError once `stop` is set.

    Counted as each call ends, not when its conversation does: the progress line moves from the first reply.
    """
    def counted_chat(messages, json_schema=None, **options):
        if stop is not None and stop.is_set():
            raise LMError("run stopped")
        try:
            return chat(messages, json_schema=json_schema, **options)
        finally:
            add_counts(figures, engine, {"calls": 1})

    return counted_chat


def chats_for(task: dict, chat=None) -> dict:
    """A chat for each of the task's engines by name: `chat` for all of them, `chat[name]` from a
    dict (every engine named), or chat.make_chat(engine) without one: the core's, which sends each
    call once, with no load control (plug.make_chats adds both)."""
    engines = engines_of(task)
    if isinstance(chat, dict):
        if missing := [name for name in engines if name not in chat]:
            raise ConfigError(f"chat: no function for the task's engine(s) {', '.join(missing)}: give one per engine "
                              f"({', '.join(engines)}), or one function for all")
        return {name: chat[name] for name in engines}
    return {name: chat or make_chat(engine) for name, engine in engines.items()}


def counted_chats(chats: dict, figures: dict, stop: threading.Event | None = None) -> dict:
    """Each engine's chat, counted under its name (`counted`)."""
    return {name: counted(chat, figures, stop, name) for name, chat in chats.items()}


# Scenarios a run remembers: the pool of earlier scenarios shown as examples, and what the copy
# check (dedupe.CopyIndex) compares with; a few kB each.
SCENARIOS_KEPT = 1000


class Recent:
    """The last `limit` texts added, oldest first: the core's memory of earlier scenarios.

    dedupe.CopyIndex has the same two methods and also finds copies (the gates plug it in).
    """

    def __init__(self, limit: int = SCENARIOS_KEPT):
        self.kept = collections.deque(maxlen=limit)

    def texts(self) -> list[str]:
        return list(self.kept)

    def add(self, text: str) -> None:
        self.kept.append(text)


def new_memory(records=(), scenarios=None) -> dict:
    """What the stages remember across conversations, bounded (memory stays flat in N).

    `scenarios` holds the earlier scenarios (anything with texts() and add(); default `Recent`);
    `records` (a resumed run's, read from disk) seed it, so no run repeats an earlier one's scenario.
    """
    memory = {"scenarios": Recent() if scenarios is None else scenarios}
    for record in records:
        remember(memory, record)
    return memory


def remember(memory: dict, record: dict) -> None:
    """Add an earlier conversation's scenario to `memory`."""
    if scenario := last_step(record, "scenario"):
        memory["scenarios"].add(scenario["content"])


def generate(task: dict, n: int, *, chat=None, seed: int | str | None = None, concurrency: int = 1,
             stats: dict | None = None, control: dict | None = None, trace=None, memory: dict | None = None,
             review=None):
    """Yield `n` accepted records as they complete, with up to `concurrency` in flight on threads.

    `chat`: one function for every engine, a dict by engine name, or None for each engine's
    client (`chats_for`). `stats` (`new_stats`) fills in as the run goes, from any thread;
    `memory` (`new_memory`) is what the stages remember; `review` the review hook (None: replies
    as written); `control` (`new_control`) drains the run early; `trace(event, **data)` sees
    every call and stage.
    """
    stats = fill_stats(stats)
    memory = new_memory() if memory is None else memory
    stop = threading.Event()
    chats = counted_chats(chats_for(task, chat), stats, stop)  # here, not at the first record: a bad `chat` says so now
    return _on_threads(task, n, chats, stop, memory=memory, review=review, trace=trace, seed=seed,
                       concurrency=concurrency, stats=stats, control=control)


def _on_threads(task: dict, n: int, chats: dict, stop: threading.Event, *, memory, review, trace, seed, concurrency,
                stats, control):
    """`generate`'s records: conversations on a thread pool, driven by `drive`."""
    pool = ThreadPoolExecutor(max_workers=concurrency)

    def start(conversation_seed: int):
        ctx = {"task": task, "memory": memory, "trace": trace, "chats": chats, "chat": chats[DEFAULT_ENGINE],
               "rng": random.Random(conversation_seed), **({"review": review} if review else {})}
        return pool.submit(run_conversation, task, ctx)

    def wait_some(futures: list, timeout: float) -> list:
        return list(wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)[0])

    try:
        yield from drive(n, Executor(start=start, wait=wait_some, finish=lambda future: future.result()),
                         seed=task.get("seed") if seed is None else seed, concurrency=concurrency,
                         stats=stats, control=control)
    finally:
        # subtle: runs on normal exit, on error and when the consumer closes the generator;
        # in-flight conversations see `stop` at their next LM call and end quickly.
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)


def new_control() -> dict:
    """How a caller ends a run early: set `drain_until` (a time.monotonic() value) and the driver
    starts no more conversations, keeps those that finish by then, and returns.

        control["drain_until"] = time.monotonic() + 10   # a signal: 10 s of grace
        control["drain_until"] = time.monotonic()        # a second signal: now
    """
    return {"drain_until": None}


def fill_stats(stats: dict | None) -> Figures:
    """`stats` with every figure of `new_stats` present: a caller's {} fills in, its figures add up."""
    stats = {} if stats is None else stats
    for key, value in new_stats().items():
        stats.setdefault(key, value)
    return stats


# How often the driver looks at `control` while it waits for a conversation to finish.
POLL_SECONDS = 0.25


class Executor(TypedDict):
    """Where the driver's conversations run: threads (`_on_threads`), Ray workers (ray_executor.Crew)."""

    start: Callable[[int], object]  # a conversation's seed -> a handle
    wait: Callable[[list, float], list]  # (handles, timeout in seconds) -> those finished
    finish: Callable[[object], tuple | None]  # handle -> (record, drop reason), or None: lost with its worker


def drive(n: int, executor: Executor, *, seed, concurrency: int, stats: dict, control: dict | None = None):
    """The driver loop of every run: keep conversations in flight until `n` are accepted; yield each.

    A conversation lost with its worker (`finish` gives None) runs again with the same seed. A
    conversation is only started while accepted + in flight < n, so no call is spent on one that
    could not be kept; a drop starts a replacement. If every conversation keeps being dropped
    (the LM failing, a stage that always drops), LMError is raised instead of spending calls forever.
    """
    control = control or new_control()
    master = random.Random(seed)
    bounds = new_bounds(concurrency)
    in_flight: dict = {}  # handle -> the conversation's seed
    rerun: list[int] = []
    before = stats["accepted"]  # a caller's figures add up: this run's own count is the difference
    while stats["accepted"] - before < n:
        draining = control["drain_until"] is not None
        if draining and (not in_flight or time.monotonic() >= control["drain_until"]):
            return
        while not draining and len(in_flight) < concurrency and stats["accepted"] - before + len(in_flight) < n:
            conversation_seed = rerun.pop() if rerun else master.randrange(2**63)
            in_flight[executor["start"](conversation_seed)] = conversation_seed
        for handle in executor["wait"](list(in_flight), POLL_SECONDS):
            conversation_seed = in_flight.pop(handle)
            outcome = executor["finish"](handle)
            if outcome is None:
                rerun.append(conversation_seed)
                continue
            record, reason = outcome
            tally(stats, bounds, reason)
            if record is not None:
                yield record


def new_bounds(concurrency: int) -> dict:
    """Bounds on a hopeless run: a dead server fails fast (2 x concurrency + 3 conversations in a row
    failing on LM calls); a model whose every conversation is dropped (wrong voice, empty text, a
    filter that always fires) gets more tries (max(50, 4 x concurrency) drops in a row)."""
    return {"failures": 0, "drops": 0, "max_failures": 2 * concurrency + 3, "max_drops": max(50, 4 * concurrency)}


def tally(stats: dict, bounds: dict, reason: str | None) -> None:
    """Count one finished conversation (`reason` None: accepted); LMError when a bound is reached."""
    if reason is None:
        bounds["failures"] = bounds["drops"] = 0
        stats["accepted"] += 1
        return
    lm_failed = reason.startswith("LM call failed")
    stats["dropped"]["LM call failed" if lm_failed else reason] += 1
    bounds["failures"] = bounds["failures"] + 1 if lm_failed else 0
    bounds["drops"] += 1
    if bounds["failures"] >= bounds["max_failures"]:
        raise LMError(f"{bounds['failures']} conversations in a row failed on LM calls; last: {reason}")
    if bounds["drops"] >= bounds["max_drops"]:
        common = stats["dropped"].most_common(1)[0][0]
        raise LMError(f"{bounds['drops']} conversations in a row were dropped, most often for "
                      f"'{common}': look at one with 'python -m chitchat_gen trace'")
