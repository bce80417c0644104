"""The capabilities plugged into the core's seams: the gates, the copy check's memory, load control,
retries and the embedded model. The core (pipeline.generate) runs with none of them; `generate` here runs
with all of them, as `run` and the CLI do:

    from chitchat_gen import load_task, generate        # this generate
    for record in generate(load_task("task.yaml"), 3, seed=1):
        print(record["conversation_id"])

    generate(task, 3, chat=my_chat, gates=False)         # the core's review: replies as written
"""

from __future__ import annotations

from . import chat as core_chat
from . import (
    extra_stages,
    local,  # noqa: F401  (registers the engine type `local` with chat.ENGINES)
    pipeline,
    retry,
)
from . import gates as quality_gates
from .dedupe import CopyIndex
from .pipeline import USAGE, add_counts
from .preflight import check_engine
from .ratelimit import make_pool
from .stages import DEFAULT_ENGINE, engines_of


def make_chat(engine: dict, on_usage=None, pool=None):
    """chat.make_chat behind ratelimit's load control (a Pool made from `engine` unless given), its
    failed calls retried and busy replies waited out (retry.send)."""
    if engine["type"] in core_chat.HTTP_ENGINES and pool is None:
        pool = make_pool(engine)
    return core_chat.make_chat(engine, on_usage, pool, retry.send)


def usage_counter(figures_of, engine: str = DEFAULT_ENGINE):
    """`on_usage` for chat.make_chat: each call's tokens added to the figures `figures_of()` returns
    (the run's, or on a Ray worker each conversation's own)."""
    def on_usage(*usage: int) -> None:
        add_counts(figures_of(), engine, dict(zip(USAGE, usage)))

    return on_usage


def checked_engines(task: dict) -> dict:
    """Every engine of the task by name, each checked (preflight.check_engine) and resolved."""
    return {name: check_engine(engine) for name, engine in engines_of(task).items()}


def make_pools(engines: dict) -> dict:
    """Load control for each HTTP engine by name: each keeps its own endpoints, limits and pace."""
    return {name: make_pool(engine) for name, engine in engines.items() if engine["type"] in core_chat.HTTP_ENGINES}


def make_chats(engines: dict, figures_of=None, pools: dict | None = None) -> dict:
    """A client for each engine by name, behind its pool (`make_pools`, made here unless given);
    with `figures_of`, each call's tokens are counted in the figures it returns, under the engine's name."""
    pools = make_pools(engines) if pools is None else pools
    return {name: make_chat(engine, usage_counter(figures_of, name) if figures_of else None, pools.get(name))
            for name, engine in engines.items()}


def new_memory(records=()) -> dict:
    """pipeline.new_memory whose scenarios are a dedupe.CopyIndex (the copy check's memory), with
    the openers of `records` (a resumed run's) for filter/unique_first_user."""
    memory = pipeline.new_memory(scenarios=CopyIndex(limit=pipeline.SCENARIOS_KEPT))
    for record in records:
        pipeline.remember(memory, record)
        extra_stages.remember_opener(memory, record)
    return memory


def generate(task: dict, n: int, *, chat=None, gates: bool = True, memory: dict | None = None, **options):
    """pipeline.generate with the gates (`gates=False`: replies as written), their memory, and
    without `chat` the task's engines checked and each behind its load control. `options` are
    pipeline.generate's (seed, concurrency, stats, control, trace). A bad `quality:` section or
    a dead server (of any of the task's engines) raises ConfigError here, before the first
    record is asked for."""
    review = quality_gates.reviewer(task) if gates else None
    if memory is None and gates:
        memory = new_memory()
    if chat is None:
        chat = make_chats(checked_engines(task))
    return pipeline.generate(task, n, chat=chat, review=review, memory=memory, **options)
