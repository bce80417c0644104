"""The capabilities plugged into the core's seams: the gates, the copy check's memory, load control
and the embedded model. The core (pipeline.generate) runs with none of them; `generate` here runs
with all of them, as `run` and the CLI do:

    from chitchat_gen import load_task, generate        # this generate
    for record in generate(load_task("task.yaml"), 3, seed=1):
        print(record["conversation_id"])

    generate(task, 3, chat=my_chat, gates=False)         # the core's review: replies as written
"""

from __future__ import annotations

from . import chat as core_chat
from . import gates as quality_gates
from . import (
    local,  # noqa: F401  (registers the engine type `local` with chat.ENGINES)
    pipeline,
)
from .dedupe import CopyIndex
from .preflight import check_engine
from .ratelimit import make_pool


def make_chat(engine: dict, on_usage=None, pool=None):
    """chat.make_chat behind ratelimit's load control (a Pool made from `engine` unless given)."""
    if engine["type"] in core_chat.HTTP_ENGINES and pool is None:
        pool = make_pool(engine)
    return core_chat.make_chat(engine, on_usage, pool)


def new_memory(records=()) -> dict:
    """pipeline.new_memory whose scenarios are a dedupe.CopyIndex: the copy check's memory."""
    return pipeline.new_memory(records, scenarios=CopyIndex(limit=pipeline.SCENARIOS_KEPT))


def generate(task: dict, n: int, *, chat=None, gates: bool = True, memory: dict | None = None, **options):
    """pipeline.generate with the gates (`gates=False`: replies as written), their memory, and
    without `chat` the task's engine checked and behind load control. `options` are
    pipeline.generate's (seed, concurrency, stats, control, trace). A bad `quality:` section or
    a dead server raises ConfigError here, before the first record is asked for."""
    review = quality_gates.reviewer(task) if gates else None
    if memory is None and gates:
        memory = new_memory()
    if chat is None:
        chat = make_chat(check_engine(task["engine"]))
    return pipeline.generate(task, n, chat=chat, review=review, memory=memory, **options)
