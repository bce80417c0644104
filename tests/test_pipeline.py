"""The conversation loop and the concurrent runner, with the canned chat function."""

import random
import threading
import time

import pytest
from fake_lm import FakeServer, canned_reply, fake_chat

from chitchat_gen import STAGES, LMError, generate, load_task, stage
from chitchat_gen.pipeline import new_control, new_memory, run_conversation
from chitchat_gen.record import last_step


@pytest.fixture
def task(task_dir):
    return load_task(task_dir / "task.yaml")


def turns(record):
    return sum(1 for s in record["steps"] if s["role"] == "assistant")


def test_a_conversation_has_the_stage_steps_in_order_and_a_closing_exchange(task):
    record, reason = run_conversation(task, {"task": task, "chat": fake_chat, "rng": random.Random(0),
                                             "memory": new_memory()})
    assert reason is None
    roles = [s["role"] for s in record["steps"]]
    assert roles[:2] == ["persona", "scenario"]  # the shipped task samples the persona first
    assert roles[2:] == ["flow_controller", "user", "assistant"] * turns(record)
    assert 2 <= turns(record) <= 4
    flows = [s for s in record["steps"] if s["role"] == "flow_controller"]
    assert flows[-1]["terminate"] and not any(f["terminate"] for f in flows[:-1])
    assert [f["metadata"]["turn"] for f in flows] == list(range(1, len(flows) + 1))
    assert record["steps"][-1]["role"] == "assistant"  # the goodbye is answered


def test_turn_bounds_hold_over_many_conversations(task):
    seen = set()
    for seed in range(60):
        record, _ = run_conversation(task, {"task": task, "chat": fake_chat, "rng": random.Random(seed),
                                            "memory": new_memory()})
        seen.add(turns(record))
    assert seen <= {2, 3, 4} and len(seen) == 3


def test_without_forced_close_a_conversation_stops_at_max_turns(task):
    task["close_at_max_turns"] = False
    task["iteration_stages"][0]["patterns"][-1]["weight"] = 0  # termination never drawn
    record, _ = run_conversation(task, {"task": task, "chat": fake_chat, "rng": random.Random(0),
                                        "memory": new_memory()})
    assert turns(record) == 4
    assert not any(s.get("terminate") for s in record["steps"])


def test_without_a_flow_controller_a_conversation_runs_max_turns(task):
    task["iteration_stages"] = [s for s in task["iteration_stages"] if s["name"] != "lm/flow_controller"]
    task["max_turns"], task["min_turns"] = 1, 1
    record, reason = run_conversation(task, {"task": task, "chat": fake_chat, "rng": random.Random(0),
                                             "memory": new_memory()})
    assert reason is None and turns(record) == 1


def test_fewer_turns_than_min_turns_drops(task):
    task["iteration_stages"] = [s for s in task["iteration_stages"] if s["name"] != "lm/assistant/naive"]
    record, reason = run_conversation(task, {"task": task, "chat": fake_chat, "rng": random.Random(0),
                                             "memory": new_memory()})
    assert record is None and reason == "0 turns, outside min_turns..max_turns"


def test_an_empty_message_written_by_a_custom_stage_drops(task):
    @stage("test/blank_reply")
    def blank_reply(record, ctx):
        record["steps"][-1]["content"] = "   "  # a stage that rewrites the last reply, badly
        return record

    try:
        task["iteration_stages"].append({"name": "test/blank_reply"})
        record, reason = run_conversation(task, {"task": task, "chat": fake_chat, "rng": random.Random(0),
                                                 "memory": new_memory()})
    finally:
        del STAGES["test/blank_reply"]
    assert record is None and reason == "empty message"


def test_a_stage_drop_is_reported_with_the_stage_name(task):
    def chat(messages, json_schema=None, **options):
        return "" if "helpful, friendly AI assistant" in messages[0]["content"] else fake_chat(messages, json_schema)
    record, reason = run_conversation(task, {"task": task, "chat": chat, "rng": random.Random(0),
                                             "memory": new_memory()})
    assert record is None and reason == "lm/assistant/naive: assistant message empty"


def test_generate_yields_exactly_n_with_many_in_flight(task):
    records = list(generate(task, 25, chat=fake_chat, concurrency=8))
    assert len(records) == 25
    assert len({r["conversation_id"] for r in records}) == 25


def test_no_conversation_is_started_beyond_n(task):
    scenario_calls = []

    def chat(messages, json_schema=None, **options):
        if "short scenarios" in messages[0]["content"]:
            scenario_calls.append(1)
        return fake_chat(messages, json_schema)

    stats = {}
    assert len(list(generate(task, 3, chat=chat, concurrency=16, stats=stats))) == 3
    assert len(scenario_calls) == 3 and stats["accepted"] == 3


def test_drops_are_replaced_and_counted(task):
    rng = random.Random(7)
    lock = threading.Lock()

    def flaky(messages, json_schema=None, **options):
        with lock:
            empty = "helpful, friendly AI assistant" in messages[0]["content"] and rng.random() < 0.2
        return "" if empty else fake_chat(messages, json_schema)

    stats = {}
    records = list(generate(task, 20, chat=flaky, concurrency=4, stats=stats))
    assert len(records) == 20
    assert stats["dropped"]["lm/assistant/naive: assistant message empty"] > 0
    assert all(s["content"] for r in records for s in r["steps"])


def test_a_dead_lm_stops_the_run_instead_of_spinning(task):
    def dead(messages, json_schema=None, **options):
        raise LMError("connection refused")

    stats = {}
    with pytest.raises(LMError, match="in a row failed"):
        list(generate(task, 5, chat=dead, concurrency=2, stats=stats))
    assert stats["dropped"]["LM call failed"] == 2 * 2 + 3


def test_same_seed_same_sampling_decisions(task):
    def decisions(seed):
        records = list(generate(task, 5, chat=fake_chat, seed=seed))
        return [(last_step(r, "persona")["persona_role"], [s["content"] for s in r["steps"] if s["role"] == "flow_controller"])
                for r in records]
    assert decisions(11) == decisions(11)
    assert decisions(11) != decisions(12)


def test_closing_the_generator_early_stops_the_workers(task):
    calls_at = []  # the number of calls made when each new call began

    def slow_chat(messages, json_schema=None, **options):
        calls_at.append(len(calls_at))
        threading.Event().wait(0.01)
        return fake_chat(messages, json_schema)

    before = set(threading.enumerate())
    gen = generate(task, 100, chat=slow_chat, concurrency=4)
    next(gen)
    gen.close()
    closed_at = len(calls_at)
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=30)  # the pool's threads end once their conversation sees the stop
    assert all(not thread.is_alive() for thread in set(threading.enumerate()) - before)
    assert len(calls_at) - closed_at <= 4  # at most the call each conversation in flight was making


def test_a_drained_run_starts_nothing_more_and_keeps_what_finishes_in_time(task):
    control, calls = new_control(), []

    def counting_chat(messages, json_schema=None, **options):
        calls.append(1)
        return fake_chat(messages, json_schema)

    gen = generate(task, 50, chat=counting_chat, concurrency=4, control=control, seed=3)
    kept = [next(gen)]
    control["drain_until"] = time.monotonic() + 30  # a signal with 30 s of grace
    kept += list(gen)  # ends by itself: the 3 others in flight finish well within the grace
    assert 2 <= len(kept) <= 4, "no new conversation is started, those in flight are kept"
    calls_then = len(calls)
    gen.close()
    assert len(calls) == calls_then


def test_a_second_signal_ends_the_wait_at_once(task):
    control, calling, released = new_control(), threading.Event(), threading.Event()

    def never_answers(messages, json_schema=None, **options):
        calling.set()
        released.wait(3600)  # until the test ends: Python joins the pool's threads at exit

    def signals_twice():  # from another thread, while the consumer waits on the stuck conversation
        calling.wait(30)
        control["drain_until"] = time.monotonic() + 3600  # the first: an hour of grace
        control["drain_until"] = time.monotonic()  # the second: now

    threading.Thread(target=signals_twice, daemon=True).start()
    try:
        assert list(generate(task, 1, chat=never_answers, concurrency=1, control=control)) == []
    finally:
        released.set()


def test_a_stage_that_always_drops_stops_the_run_with_the_reason(task):
    def assistant_voice(messages, json_schema=None, **options):
        if "role-playing a human user" in messages[0]["content"]:
            return "How can I help you today?"
        return fake_chat(messages, json_schema)

    stats = {}
    with pytest.raises(LMError, match="50 conversations in a row were dropped, most often for "
                                      "'lm/user/guided: user message: assistant's voice'"):
        list(generate(task, 3, chat=assistant_voice, stats=stats))
    assert stats["accepted"] == 0


def test_without_chat_generate_uses_the_tasks_engine(task_dir):
    from fake_lm import FakeServer
    with FakeServer() as server:
        task = load_task(task_dir / "task.yaml", base_url=server.url)
        assert len(list(generate(task, 2))) == 2
        assert server.requests[0][0] == "/api/tags" and len(server.chat_requests()) > 10


def test_lm_calls_are_counted_as_each_completes_not_when_the_conversation_ends(task_dir):
    stats = {}
    seen = []  # (calls, accepted) in the run's stats as the server takes each chat request

    def reply(messages, json_schema=None):
        seen.append((stats["calls"], stats["accepted"]))
        return canned_reply(messages, json_schema)

    with FakeServer(latency=0.02, reply=reply) as server:
        task = load_task(task_dir / "task.yaml", base_url=server.url)
        assert len(list(generate(task, 2, concurrency=1, stats=stats))) == 2
        requests = len(server.chat_requests())
    in_first = [calls for calls, accepted in seen if accepted == 0]
    assert len(in_first) > 5  # the first conversation's calls, made before it was accepted
    assert in_first == list(range(len(in_first)))  # each saw every call before it counted already
    assert stats["calls"] == requests == len(seen)


def test_calls_from_many_threads_add_up_to_the_requests_sent(task_dir):
    stats = {}
    with FakeServer(latency=0.005) as server:
        task = load_task(task_dir / "task.yaml", base_url=server.url)
        assert len(list(generate(task, 12, concurrency=8, stats=stats))) == 12
        assert stats["calls"] == len(server.chat_requests())
