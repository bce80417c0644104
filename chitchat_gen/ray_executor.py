"""The Ray path: workers (Ray actors) run conversations, the driver hands out work and yields.

    connect("auto")                     # or "local": a new local instance; "ray://head:10001": Ray Client
    for record in generate_on_ray(task, 1000, concurrency=128):
        append(store, record)           # the driver alone writes, as on the thread path

Same contract as `pipeline.generate`: it yields exactly `n` accepted records, in completion
order, and writes nothing, so the CLI's files, resume, lock, card and summary work unchanged.
Each worker holds its own LM client (with its own load control) and runs up to
`ceil(concurrency / workers)` conversations at once in its threads. The driver submits
"run one conversation with this seed" calls, never "make k": at most `concurrency` and at most
`n - accepted` are in flight across all workers, so no conversation is started that could
overshoot n. A worker that dies loses only its in-flight conversations; the driver starts a
fresh worker and runs them again with the same seeds.

`ray` is imported here only, and only when called: the core runs without it.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import re
import socket
import threading
import warnings

from . import plug
from .errors import ConfigError, LMError, NoAnswer
from .gates import reviewer
from .install import pip_install
from .pipeline import Executor, add_counts, chats_for, counted_chats, drive, fill_stats, new_stats, run_conversation
from .ratelimit import concurrency_of
from .stages import DEFAULT_ENGINE, STAGES

ADDRESS_FORMS = "'auto', 'ray://HOST:10001' (Ray Client) or 'HOST:6379' (the head's GCS)"


def check_address(text: str) -> str:
    """`text` if it is a Ray address this tool passes to ray.init, else a ValueError naming the forms."""
    if text in ("auto", "local") or re.fullmatch(r"(ray://)?[\w.\-\[\]:]+:\d+", text):
        return text
    raise ValueError(f"expected {ADDRESS_FORMS}, got {text!r}")


def _cause(exc: Exception) -> str:
    """The line of a Ray error that names the cause (Ray's messages run to a page of context)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"[\w.]*(Error|Exception): ", line)]
    return (named or lines or [type(exc).__name__])[-1][:300]


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--ray needs the ray package, which is not installed: {pip_install('ray')}")
    return ray


def connect(address: str = "local") -> bool:
    """Join Ray at `address`; True if this call did it (and so should `disconnect`).

    "local" (what --ray alone and `generate_on_ray` without an address do) starts a new local
    instance, whatever RAY_ADDRESS or an earlier `ray start` left behind; "auto" joins the cluster
    RAY_ADDRESS names, else the one last started on this machine; "HOST:6379" or
    "ray://HOST:10001" join that cluster.

    Already connected (a notebook that ran `ray.init` itself, or a second task): nothing to do.
    A missing ray package or a cluster that does not answer is a ConfigError naming the fix.
    """
    ray = _ray()
    if ray.is_initialized():
        return False
    if address not in ("auto", "local"):
        _check_reachable(address)
    # subtle: never address=None for a local run. ray.init() joins the address in RAY_ADDRESS or in
    # {Ray's temp dir}/ray_current_cluster, which outlives its cluster (a killed head, a crashed test
    # cluster): Ray then retries the dead address for minutes. "local" reads neither.
    options = {"address": address, "logging_level": logging.WARNING}
    if address == "local":
        options["include_dashboard"] = False  # not accepted when joining a cluster
    try:
        with warnings.catch_warnings():  # Ray Client warns before it raises; the error line says it all
            warnings.simplefilter("ignore")
            _init_within(ray, options, None if address == "local" else JOIN_SECONDS)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        cause = _cause(exc)
        if "ray[client]" in cause:
            fix = f"{pip_install('ray')} (it includes ray[client])"
        elif "handshake within" in cause:
            fix = ("check that it is the head's GCS port (HOST:6379, from a node of the cluster) or Ray Client's "
                   "(ray://HOST:10001), and that the cluster's nodes are reachable from here")
        elif address.startswith("ray://") and "timeout" in cause:  # seen with Ray 2.60's token authentication
            fix = ("if the cluster uses token authentication, set RAY_AUTH_MODE=token and copy its token "
                   "(~/.ray/auth_token on the head) to this machine; else check that port is the Ray Client's")
        else:
            fix = "start one with 'ray start --head' on the head node, or use --ray alone for a local instance"
        raise ConfigError(f"cannot join the Ray cluster at {address}: {cause}: {fix}")
    return True


# The longest a join may take. subtle: ray.init can hang for minutes on an address that accepts
# TCP but never completes Ray's handshake (seen: a cluster whose nodes were bound to 127.0.0.1,
# and after it was gone), and it has no timeout of its own.
JOIN_SECONDS = 60.0


def _init_within(ray, options: dict, seconds: float | None) -> None:
    """ray.init(**options), or TimeoutError after `seconds` (None: no bound, for a local start).

    The join runs in a daemon thread that is left behind if it hangs: the CLI exits without
    waiting for it (cli._exit_now).
    """
    if seconds is None:
        ray.init(**options)
        return
    outcome: dict = {}

    def join():
        try:
            ray.init(**options)
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc
        outcome["done"] = True

    thread = threading.Thread(target=join, name="ray-join", daemon=True)
    thread.start()
    thread.join(seconds)
    if "error" in outcome:
        raise outcome["error"]
    if "done" not in outcome:
        raise TimeoutError(f"no answer to Ray's handshake within {seconds:g} s")


def _check_reachable(address: str) -> None:
    # subtle: ray.init retries a silent address for minutes, logging as it goes; one TCP connect says it now.
    host, port = address.removeprefix("ray://").rsplit(":", 1)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}): start its head with "
                          "'ray start --head' and check the address (ray://HOST:10001 for Ray Client, "
                          "HOST:6379 from a node of the cluster)")


def disconnect() -> None:
    """Leave Ray (stopping the local instance `connect` started): the CLI calls it on every way out,
    Ctrl-C included, which exits without running atexit (Ray's own clean-up)."""
    _ray().shutdown()


class Worker:
    """One Ray actor: its own LM clients (one per engine), its own memory of scenarios, conversations in its threads.

    Made into an actor by `ray.remote(Worker)` at run time (so this module imports without ray).
    """

    def __init__(self, task: dict, engines: dict | None, chat, stages: dict, memory: dict | None):
        STAGES.update(stages)  # custom stages registered on the driver (a notebook's @stage) run here too
        self.task, self.review = task, reviewer(task)
        # subtle: a conversation runs in one actor thread and the chat reports usage in the calling
        # thread, so a thread-local dict is this conversation's figures.
        self.running = threading.local()
        self.chats = chats_for(task, chat) if chat else plug.make_chats(engines, lambda: self.running.figures)
        self.memory = memory or plug.new_memory()  # a resumed run's, from the driver; then this worker's own

    def run_one(self, seed: int) -> tuple[dict | None, str | None, dict]:
        """Run one conversation: (record or None, drop reason, its LM calls and tokens by engine)."""
        figures = self.running.figures = new_stats()
        chats = counted_chats(self.chats, figures)
        ctx = {"task": self.task, "memory": self.memory, "trace": None, "rng": random.Random(seed),
               "review": self.review, "chats": chats, "chat": chats[DEFAULT_ENGINE]}
        record, reason = run_conversation(self.task, ctx)
        return record, reason, figures["engines"]


def generate_on_ray(task: dict, n: int, *, chat=None, engines: dict | None = None, address: str = "local",
                    workers: int | None = None, seed: int | str | None = None, concurrency: int | None = None,
                    stats: dict | None = None, memory: dict | None = None, control: dict | None = None):
    """Yield `n` accepted records made by Ray workers, with up to `concurrency` in flight in all.

    `chat` (any picklable callable, e.g. a module-level function) is shipped to every worker;
    without it each worker builds every engine's client from `engines` (by name, as
    plug.checked_engines gives them; checked here if not given).
    `workers` defaults to one per node of the cluster. Unless Ray is already connected, starts a
    local instance or joins `address` ("auto", "HOST:6379", "ray://HOST:10001"), and then
    disconnects at the end. `stats` gains `tokens` here (prompt_tokens, completion_tokens, cached_tokens),
    which the thread path leaves to the caller's client. The loop itself is pipeline.drive's,
    as on threads; `control` drains the run early the same way.
    """
    ray = _ray()
    connected_here = connect(address)
    stats = fill_stats(stats)
    crew = None
    try:
        if chat is None and engines is None:
            engines = plug.checked_engines(task)
        concurrency = concurrency or (concurrency_of(engines[DEFAULT_ENGINE]) if engines else 1)
        workers = min(workers or sum(1 for node in ray.nodes() if node["Alive"]), concurrency)
        if engines:  # --max-rpm / --max-tpm are the whole run's pace: each worker gets its share
            engines = {name: {**e, **{key: e[key] / workers for key in ("max_rpm", "max_tpm") if e.get(key)}}
                       for name, e in engines.items()}
        crew = Crew(ray, task, engines, chat, memory, stats, workers, concurrency)
        for _ in range(workers):
            crew.hire()
        yield from drive(n, crew.executor(), seed=task.get("seed") if seed is None else seed, concurrency=concurrency,
                         stats=stats, control=control)
    finally:
        # subtle: also when the consumer stops early or the driver is interrupted: no worker goes on
        # spending LM calls for a run that has ended.
        if crew:
            crew.dismiss()
        if connected_here:
            ray.shutdown()


class Crew:
    """The run's Ray workers, seen from the driver: pipeline.drive's executor on Ray.

    Each conversation starts on the least busy worker; a worker that dies is replaced once (its
    other calls fail the same way) and its conversations run again, until too many die in a row.
    """

    def __init__(self, ray, task: dict, engines: dict | None, chat, memory: dict | None, stats: dict,
                 workers: int, concurrency: int):
        self.ray, self.stats, self.engines, self.chat, self.memory = ray, stats, engines, chat, memory
        self.actors: dict = {}  # actor -> conversations in flight on it
        self.on_actor: dict = {}  # ref -> the actor running it
        self.deaths = {"in_a_row": 0, "max": 2 * workers + 3}
        self.stages = {cfg["name"]: STAGES[cfg["name"]]
                       for key, stage_list in task.items() if key.endswith("_stages") for cfg in stage_list}
        # num_cpus=0: a worker waits on HTTP, it does not compute; SPREAD puts one on each node first.
        self.worker = ray.remote(Worker)
        self.options = {"num_cpus": 0, "max_concurrency": math.ceil(concurrency / workers),
                        "scheduling_strategy": "SPREAD"}
        self.task_ref = ray.put(task)
        self.run_name, self.numbers = f"chitchat_gen-{random.randrange(16**8):08x}", itertools.count(1)

    def executor(self) -> Executor:
        return Executor(start=self.start, wait=self.wait, finish=self.finish)

    def hire(self) -> None:
        """One more worker, named, so `ray list actors` shows whose they are (and a test can find one to kill)."""
        name = f"{self.run_name}-worker-{next(self.numbers)}"
        actor = self.worker.options(name=name, **self.options).remote(self.task_ref, self.engines, self.chat,
                                                                      self.stages, self.memory)
        self.actors[actor] = 0

    def start(self, conversation_seed: int):
        actor = min(self.actors, key=self.actors.get)  # the least busy worker
        self.actors[actor] += 1
        ref = actor.run_one.remote(conversation_seed)
        self.on_actor[ref] = actor
        return ref

    def wait(self, refs: list, timeout: float) -> list:
        return self.ray.wait(refs, num_returns=1, timeout=timeout)[0]

    def finish(self, ref):
        """(record, drop reason) of a finished conversation, its figures added to the run's; None when its worker died."""
        actor = self.on_actor.pop(ref)
        try:
            record, reason, figures = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, NoAnswer):  # the servers went silent: one line, not the worker's traceback
                raise NoAnswer(str(exc.cause)) from None
            raise
        except self.ray.exceptions.RayActorError as exc:
            self.replace(actor, exc)
            return None  # the driver runs it again, same seed
        if actor in self.actors:
            self.actors[actor] -= 1
        for engine, counts in figures.items():
            add_counts(self.stats, engine, counts)
        if record is not None:
            self.deaths["in_a_row"] = 0
        return record, reason

    def replace(self, actor, exc: Exception) -> None:
        """A worker died under a conversation: count the loss, hire its successor; LMError after too many in a row."""
        self.stats["dropped"]["Ray worker lost (run again)"] += 1
        if actor in self.actors:  # its other in-flight calls fail the same way: replace it once
            del self.actors[actor]
            self.hire()
            self.deaths["in_a_row"] += 1
        if self.deaths["in_a_row"] >= self.deaths["max"]:
            raise LMError(f"{self.deaths['in_a_row']} Ray workers in a row died; last: {_cause(exc)}")

    def dismiss(self) -> None:
        """Kill every worker: the run has ended, however it ended."""
        for actor in self.actors:
            self.ray.kill(actor)
