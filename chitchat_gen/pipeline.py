"""The loop: run one conversation through the stages, and run many of them at once.

    >>> task = load_task("task.yaml")
    >>> for record in generate(task, 3, chat=my_chat, seed=1):
    ...     print(record["conversation_id"], len(record["steps"]))

`generate` writes nothing; the CLI (cli.py) writes what it yields with store.py.
"""

from __future__ import annotations

import collections
import random
import threading
import uuid
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from .engines import LMError, check_engine, make_chat
from .stages import STAGES, last_step


def run_conversation(task: dict, ctx: dict) -> tuple[dict | None, str | None]:
    """Return (record, None) when accepted, or (None, drop reason)."""
    record = {"task_name": task["task_name"], "is_seed": False,
              "conversation_id": uuid.uuid4().hex, "steps": []}  # random: unique across runs and machines
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
    except LMError as exc:
        reason = f"LM call failed: {exc}"
    messages = [s for s in record["steps"] if s["role"] in ("user", "assistant")]
    turns = sum(1 for s in messages if s["role"] == "assistant")
    if reason is None and any(not s["content"].strip() for s in messages):
        reason = "empty message"
    if reason is None and not task["min_turns"] <= turns <= task["max_turns"]:
        reason = f"{turns} turns, outside min_turns..max_turns"
    if ctx.get("trace"):
        ctx["trace"]("done", conversation_id=record["conversation_id"], turns=turns, drop=reason)
    return (None, reason) if reason else (record, None)


def run_stages(stages: list[dict], record: dict, ctx: dict) -> str | None:
    """Run stages in order; return the drop reason of the first stage that drops."""
    for cfg in stages:
        ctx["stage"] = cfg
        before = len(record["steps"])
        result = STAGES[cfg["name"]](record, ctx)
        drop = result if isinstance(result, str) else None
        if ctx.get("trace"):
            ctx["trace"]("stage", stage=cfg["name"], turn=ctx.get("turn"), steps=record["steps"][before:], drop=drop)
        if drop:
            return f"{cfg['name']}: {drop}"
    return None


def generate(task: dict, n: int, *, chat=None, seed: int | str | None = None, concurrency: int = 1,
             stats: dict | None = None, stop: threading.Event | None = None, trace=None):
    """Yield `n` accepted records as they complete, with up to `concurrency` in flight.

    `stats` (optional) is updated in this thread: accepted, dropped ({reason: count}), calls.
    A conversation is only started while accepted + in flight < n, so no call is spent on a
    conversation that could not be kept; a drop starts a replacement. `stop` ends the run early.
    `trace(event, **data)` is called on every LM call and stage decision (see trace.py).
    Without `chat`, the task's own engine is checked and used. If every conversation keeps
    being dropped (the LM failing, or a stage that always drops), LMError is raised instead of
    spending calls forever.
    """
    if chat is None:
        check_engine(task["engine"])
        chat = make_chat(task["engine"])
    seed = task.get("seed") if seed is None else seed
    master = random.Random(seed)
    stats = stats if stats is not None else {}
    stats.setdefault("accepted", 0)
    stats.setdefault("dropped", collections.Counter())
    stats.setdefault("calls", 0)
    stop = stop or threading.Event()
    memory = {"scenarios": collections.deque(maxlen=1000)}  # bounded: memory stays flat in n
    failures_in_a_row = drops_in_a_row = 0
    # Bounds on hopeless runs: a dead server fails fast, a model whose every conversation is dropped
    # (wrong voice, empty text, a filter that always fires) is given more tries: drops can be common.
    max_failures, max_drops = 2 * concurrency + 3, max(50, 4 * concurrency)

    def start():
        calls = [0]

        def counted_chat(messages, json_schema=None, **options):
            if stop.is_set():
                raise LMError("run stopped")
            calls[0] += 1
            return chat(messages, json_schema=json_schema, **options)

        ctx = {"task": task, "chat": counted_chat, "memory": memory, "trace": trace,
               "rng": random.Random(master.randrange(2**63))}
        future = pool.submit(run_conversation, task, ctx)
        future.calls = calls
        return future

    pool = ThreadPoolExecutor(max_workers=concurrency)
    in_flight = set()
    try:
        while stats["accepted"] < n:
            while len(in_flight) < concurrency and stats["accepted"] + len(in_flight) < n:
                in_flight.add(start())
            done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                record, reason = future.result()
                stats["calls"] += future.calls[0]
                if record is None:
                    lm_failed = reason.startswith("LM call failed")
                    stats["dropped"]["LM call failed" if lm_failed else reason] += 1
                    failures_in_a_row = failures_in_a_row + 1 if lm_failed else 0
                    drops_in_a_row += 1
                    if failures_in_a_row >= max_failures:
                        raise LMError(f"{failures_in_a_row} conversations in a row failed on LM calls; last: {reason}")
                    if drops_in_a_row >= max_drops:
                        common = stats["dropped"].most_common(1)[0][0]
                        raise LMError(f"{drops_in_a_row} conversations in a row were dropped, most often for "
                                      f"'{common}': look at one with 'python -m chitchat_gen trace'")
                    continue
                failures_in_a_row = drops_in_a_row = 0
                stats["accepted"] += 1
                yield record
    finally:
        # subtle: runs on normal exit, on error and when the consumer closes the generator;
        # in-flight conversations see `stop` at their next LM call and end quickly.
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
