"""Each stage on its own, with a scripted chat function standing in for the LM."""

import collections
import json
import math
import random
import re
import threading
import time
import uuid

import pytest
from fake_lm import fake_chat

from chitchat_gen.gates import review, reviewer
from chitchat_gen.plug import generate, new_memory
from chitchat_gen.stages import STAGES, parse_eligibility, stage
from chitchat_gen.task import load_task
from chitchat_gen.trace import flatten


@pytest.fixture
def task(task_dir):
    return load_task(task_dir / "task.yaml")


def make_ctx(task, chat=fake_chat, name="lm/flow_controller", turn=1, seed=0):
    stages = {s["name"]: s for s in task["initialization_stages"] + task["iteration_stages"]}
    calls = []

    def recording_chat(messages, json_schema=None, **options):
        calls.append({"messages": messages, "json_schema": json_schema, **options})
        return chat(messages, json_schema=json_schema, **options)

    return {"task": task, "chat": recording_chat, "rng": random.Random(seed), "turn": turn,
            "stage": stages[name], "memory": new_memory(), "calls": calls, "review": reviewer(task)}


def record_with(*steps):
    return {"task_name": "t", "is_seed": False, "conversation_id": uuid.uuid4().hex,
            "steps": [{"role": role, "content": content} for role, content in steps]}


def test_scenario_learns_from_seeds_and_cleans_the_reply(task):
    ctx = make_ctx(task, chat=lambda m, **o: 'Scenario: "A beekeeper wants to talk about swarms."',
                   name="lm/scenario")
    record = STAGES["lm/scenario"](record_with(), ctx)
    assert record["steps"][0]["content"] == "A beekeeper wants to talk about swarms."
    assert record["steps"][0]["role"] == "scenario"
    prompt = ctx["calls"][0]["messages"][-1]["content"]
    shown = [s for s in task["seed_scenarios"] if s in prompt]
    assert len(shown) == 2  # num_icl_examples
    assert ctx["memory"]["scenarios"].texts() == ["A beekeeper wants to talk about swarms."]


def test_scenario_retries_once_then_drops_a_copy_of_an_example(task):
    task["seed_scenarios"] = ["A cook talks about bread."]
    ctx = make_ctx(task, chat=lambda m, **o: "A cook talks about bread.", name="lm/scenario")
    assert STAGES["lm/scenario"](record_with(), ctx) == "scenario: copies a seed or an earlier scenario"
    assert len(ctx["calls"]) == 2
    assert ctx["calls"][0]["seed"] != ctx["calls"][1]["seed"]


def test_scenario_examples_include_earlier_generated_ones(task):
    task["seed_scenarios"] = ["Seed one."]
    ctx = make_ctx(task, chat=lambda m, **o: "Something new.", name="lm/scenario")
    ctx["memory"]["scenarios"].add("Earlier generated scenario.")
    STAGES["lm/scenario"](record_with(), ctx)
    assert "Earlier generated scenario." in ctx["calls"][0]["messages"][-1]["content"]


def test_near_duplicate_filter_retries_then_drops(task):
    task["seed_scenarios"] = ["Seed one about bread baking."]
    next(s for s in task["initialization_stages"] if s["name"] == "lm/scenario")["num_icl_examples"] = 1

    def run(threshold):
        ctx = make_ctx(task, chat=lambda m, **o: "A keen cook wants to talk about baking sourdough bread with her kids.",
                       name="lm/scenario")
        ctx["stage"] = dict(ctx["stage"], near_duplicate_threshold=threshold)
        # Jaccard 0.28, and less than half of either is in the other: not a copy, but near at 0.25.
        ctx["memory"]["scenarios"].add("A keen cook wants to talk about growing tomatoes in pots on a balcony.")
        return STAGES["lm/scenario"](record_with(), ctx), ctx["calls"]

    assert isinstance(run(None)[0], dict)  # filter off by default: accepted
    result, calls = run(0.25)
    assert result == "scenario: near-duplicate of an earlier scenario" and len(calls) == 2


def test_scenario_is_written_for_a_persona_sampled_first(task):
    assert [s["name"] for s in task["initialization_stages"]] == ["sample/persona", "lm/scenario"]  # the shipped order
    ctx = make_ctx(task, chat=lambda m, **o: "A potter wants glaze tips.", name="lm/scenario")
    record = record_with(("persona", "Role: potter in Kyoto. Domain: glazes."))
    record["steps"][-1].update(persona_role="potter in Kyoto", domain="glazes")
    STAGES["lm/scenario"](record, ctx)
    assert "The person: potter in Kyoto, interested in glazes." in ctx["calls"][0]["messages"][-1]["content"]
    assert "Role:" not in ctx["calls"][0]["messages"][-1]["content"]  # in words: fields were copied as the scenario
    STAGES["lm/scenario"](record_with(("persona", "A potter in Kyoto.")), ctx)  # a persona step without the fields
    assert "The person: A potter in Kyoto." in ctx["calls"][-1]["messages"][-1]["content"]
    STAGES["lm/scenario"](record_with(), ctx)
    assert "The person:" not in ctx["calls"][-1]["messages"][-1]["content"]


def test_a_task_in_digits_order_scenario_first_still_runs(task):
    task["initialization_stages"].reverse()  # DiGiT's chit_chat task: lm/scenario, then sample/persona
    records = list(generate(task, 2, chat=fake_chat))
    assert [[s["role"] for s in r["steps"][:2]] for r in records] == [["scenario", "persona"]] * 2


def test_a_reply_that_is_not_a_scenario_is_asked_again_then_dropped(task):
    replies = iter(["I'm so glad I could help!", "I'm so glad I could help!"])
    ctx = make_ctx(task, chat=lambda m, **o: next(replies), name="lm/scenario")
    assert STAGES["lm/scenario"](record_with(), ctx) == "scenario: not a scenario"
    replies = iter(["I'm so glad I could help!", "A potter in Kyoto wants glaze tips."])
    ctx = make_ctx(task, chat=lambda m, **o: next(replies), name="lm/scenario")
    assert STAGES["lm/scenario"](record_with(), ctx)["steps"][-1]["content"] == "A potter in Kyoto wants glaze tips."


def test_unique_first_user_filter(task):
    ctx = make_ctx(task, name="lm/user/guided")
    ctx["stage"] = {"name": "filter/unique_first_user"}
    first = record_with(("user", "Hi! Any tips for tomatoes?"))
    assert STAGES["filter/unique_first_user"](first, ctx) is first
    again = record_with(("user", "hi, any tips for TOMATOES"))
    assert STAGES["filter/unique_first_user"](again, ctx) == "first user message repeats an earlier conversation"
    later_turn = record_with(("user", "Hi! Any tips for tomatoes?"), ("assistant", "Yes."), ("user", "Thanks"))
    assert STAGES["filter/unique_first_user"](later_turn, ctx) is later_turn


def test_unique_first_user_lets_exactly_one_of_many_racing_openers_pass(task):
    ctx = make_ctx(task)
    ctx["stage"] = {"name": "filter/unique_first_user"}
    ctx["memory"] = {}
    start = threading.Barrier(8)
    passed = []

    def yield_at_every_line(frame, event, arg):
        # Forces the worst interleaving: every line of the stage hands the processor to another thread.
        if frame.f_code.co_filename.endswith("stages.py"):
            return lambda frame, event, arg: time.sleep(0.001) if event == "line" else None
        return None

    def run():
        record = record_with(("user", "The same opener, word for word"))
        start.wait()
        if STAGES["filter/unique_first_user"](record, ctx) is record:
            passed.append(record["conversation_id"])

    threads = [threading.Thread(target=run) for _ in range(8)]
    threading.settrace(yield_at_every_line)
    try:
        for thread in threads:
            thread.start()
    finally:
        threading.settrace(None)
    for thread in threads:
        thread.join()
    assert len(passed) == 1


def test_persona_is_sampled_with_the_rng_and_rendered(task):
    chosen = [STAGES["sample/persona"](record_with(), make_ctx(task, name="sample/persona", seed=3))["steps"][0]
              for _ in range(2)]
    assert chosen[0] == chosen[1]  # same seed, same persona
    step = chosen[0]
    assert step["role"] == "persona" and step["target"] == "user"
    assert step["content"].startswith(f"Role: {step['persona_role']}.")
    roles = {STAGES["sample/persona"](record_with(), make_ctx(task, name="sample/persona", seed=s))["steps"][0]["persona_role"]
             for s in range(30)}
    assert len(roles) > 10


def flow_step(task, turn, chat=fake_chat, seed=0):
    ctx = make_ctx(task, chat=chat, turn=turn, seed=seed)
    record = STAGES["lm/flow_controller"](record_with(("user", "hi"), ("assistant", "hello")), ctx)
    return record["steps"][-1], ctx["calls"]


def test_termination_is_not_a_candidate_before_min_turns(task):
    step, calls = flow_step(task, turn=1)
    schema = calls[0]["json_schema"]
    assert "chit_chat/termination" not in schema["properties"]["eligible"]["items"]["enum"]
    assert step["terminate"] is False and "chit_chat/termination" not in step["eligible_patterns"]


def test_termination_is_a_candidate_from_min_turns(task):
    step, calls = flow_step(task, turn=2)
    assert "chit_chat/termination" in calls[0]["json_schema"]["properties"]["eligible"]["items"]["enum"]


def test_termination_is_forced_at_max_turns_without_an_eligibility_call(task):
    step, calls = flow_step(task, turn=4)
    assert step["content"] == "chit_chat/termination" and step["terminate"] is True
    assert calls == []  # no eligibility call, and the closing turn keeps its pattern's own hint
    assert step["hint"] == next(p["hint"] for p in task["iteration_stages"][0]["patterns"] if p["name"] == step["content"])


def test_close_at_max_turns_false_does_not_force(task):
    task["close_at_max_turns"] = False
    step, calls = flow_step(task, turn=4, chat=lambda m, json_schema=None, **o:
                            json.dumps({"eligible": ["chit_chat/follow_up"]}) if json_schema else "Ask more.")
    assert step["content"] == "chit_chat/follow_up" and step["terminate"] is False


def test_the_lm_narrows_the_eligible_patterns(task):
    reply = json.dumps({"eligible": ["chit_chat/clarification", "not/a_pattern"], "reasoning": "needs detail"})
    step, calls = flow_step(task, turn=2, chat=lambda m, json_schema=None, **o: reply if json_schema else "Ask what X means.")
    assert step["content"] == "chit_chat/clarification"
    assert step["eligible_patterns"] == ["chit_chat/clarification"]
    assert step["reasoning"] == "needs detail"
    assert step["hint"] == "Ask what X means."
    assert calls[0]["max_tokens"] == task["engine"]["json_max_tokens"]


@pytest.mark.parametrize("reply", ["not json at all", '{"eligible": "x"}', '{"eligible": ["nope"]}', "[1, 2]", ""])
def test_an_unusable_reply_makes_all_candidates_eligible(task, reply):
    step, _ = flow_step(task, turn=2, chat=lambda m, json_schema=None, **o: reply if json_schema else "Hint.")
    assert len(step["eligible_patterns"]) == 5


def test_generate_hint_false_uses_the_static_hint_and_saves_a_call(task):
    flow_cfg = task["iteration_stages"][0]
    flow_cfg["generate_hint"] = False
    step, calls = flow_step(task, turn=1)
    chosen = next(p for p in flow_cfg["patterns"] if p["name"] == step["content"])
    assert step["hint"] == chosen["hint"] and len(calls) == 1


def test_judge_eligibility_false_skips_the_json_call(task):
    flow_cfg = task["iteration_stages"][0]
    flow_cfg["judge_eligibility"] = False
    step, calls = flow_step(task, turn=2)
    assert len(step["eligible_patterns"]) == 5 and all(c["json_schema"] is None for c in calls)
    assert step["reasoning"] == "judge_eligibility off: all candidates eligible"


def test_pattern_frequencies_follow_the_weights(task):
    task["iteration_stages"][0]["generate_hint"] = False
    rng = random.Random(1)
    counts = collections.Counter()
    samples = 4000
    for _ in range(samples):
        ctx = make_ctx(task, turn=3, seed=rng.randrange(10**9))
        counts[STAGES["lm/flow_controller"](record_with(), ctx)["steps"][-1]["content"]] += 1
    patterns = task["iteration_stages"][0]["patterns"]
    total = sum(p["weight"] for p in patterns)
    for p in patterns:
        expected = samples * p["weight"] / total
        sigma = math.sqrt(expected * (1 - p["weight"] / total))
        assert abs(counts[p["name"]] - expected) < 4 * sigma, (p["name"], counts[p["name"]], expected)


def test_user_sees_persona_scenario_hint_and_history(task):
    record = record_with(("scenario", "A gardener chats about slugs."), ("persona", "Role: gardener."),
                         ("user", "My lettuces are gone."), ("assistant", "Slugs, probably."))
    record["steps"].append({"role": "flow_controller", "content": "chit_chat/follow_up", "hint": "Ask about beer traps."})
    ctx = make_ctx(task, chat=lambda m, **o: "User: Do beer traps work?\nAssistant: Yes.", name="lm/user/guided")
    record = STAGES["lm/user/guided"](record, ctx)
    assert record["steps"][-1]["content"] == "Do beer traps work?"
    system, prompt = ctx["calls"][0]["messages"][0]["content"], ctx["calls"][0]["messages"][1]["content"]
    assert "role-playing a human user" in system
    assert system.endswith("Who you are: Role: gardener.\nSituation: A gardener chats about slugs.")
    assert prompt == ("Conversation so far:\nUser: My lettuces are gone.\nAssistant: Slugs, probably.\n\n"
                      "Instruction for your next message: Ask about beer traps.\nYour message:")


def test_the_calls_of_a_conversation_open_with_the_same_text(task):
    """Laid out for a prefix cache: every user-side call (flow controller, hint, user) starts with
    the previous one's system text (persona and situation in it) and transcript, byte for byte; the assistant's
    calls each extend the one before; what changes per call comes after."""
    calls = []

    def chat(messages, json_schema=None, **options):
        calls.append(messages)
        return fake_chat(messages, json_schema)

    [record] = generate(task, 1, chat=chat, seed=4)
    user_side = [flatten(m) for m in calls if "role-playing" in m[0]["content"] and "last message" not in m[-1]["content"]]
    assistant = [flatten(m) for m in calls if "helpful, friendly" in m[0]["content"]]
    assert len(user_side) >= 6 and len(assistant) >= 2
    for earlier, later in zip(user_side, user_side[1:]):
        shared = re.split(r"\n\n(?:Task|Instruction for your next message): ", earlier)[0]
        if "(nothing yet" in shared:  # the first turn's placeholder gives way to the first exchange
            shared = shared[:shared.index("(nothing yet")]
        assert later.startswith(shared)
    for earlier, later in zip(assistant, assistant[1:]):
        assert later.startswith(earlier)
    closing = flatten(next(m for m in calls if "This is your last message" in m[-1]["content"]))
    assert closing.startswith(user_side[-1][:user_side[-1].index("Conversation so far:")])


def test_user_in_the_assistant_voice_is_retried_then_dropped(task):
    replies = iter(["I'm here to help you explore!", "I'll be your next chatbot assistant."])
    ctx = make_ctx(task, chat=lambda m, **o: next(replies), name="lm/user/guided")
    assert STAGES["lm/user/guided"](record_with(("scenario", "s")), ctx) == "user message: assistant's voice"
    replies = iter(["As an AI, I can help you.", "So, what about cats?"])
    ctx = make_ctx(task, chat=lambda m, **o: next(replies), name="lm/user/guided")
    assert STAGES["lm/user/guided"](record_with(("scenario", "s")), ctx)["steps"][-1]["content"] == "So, what about cats?"


def test_empty_user_message_drops(task):
    ctx = make_ctx(task, chat=lambda m, **o: "  ", name="lm/user/guided")
    assert STAGES["lm/user/guided"](record_with(), ctx) == "user message empty"


def test_assistant_gets_the_chat_history_but_not_the_persona(task):
    record = record_with(("scenario", "A chat about tea."), ("persona", "Role: secret persona."),
                         ("user", "Green or black?"))
    ctx = make_ctx(task, chat=lambda m, **o: "Assistant: Green, gently brewed.", name="lm/assistant/naive")
    record = STAGES["lm/assistant/naive"](record, ctx)
    assert record["steps"][-1]["content"] == "Green, gently brewed."
    messages = ctx["calls"][0]["messages"]
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "A chat about tea." in messages[0]["content"]
    assert all("secret persona" not in m["content"] for m in messages)


def test_empty_assistant_message_drops(task):
    ctx = make_ctx(task, chat=lambda m, **o: "", name="lm/assistant/naive")
    assert STAGES["lm/assistant/naive"](record_with(("user", "hi")), ctx) == "assistant message empty"


def test_every_call_gets_a_distinct_seed_from_the_conversation_rng(task):
    ctx = make_ctx(task, turn=2)
    STAGES["lm/flow_controller"](record_with(), ctx)
    seeds = [c["seed"] for c in ctx["calls"]]
    assert len(seeds) == 2 and len(set(seeds)) == 2


@pytest.mark.parametrize("raw,expected", [
    ('"Hello there."', "Hello there."),
    ("Scenario: A cook bakes.", "A cook bakes."),
    ("**User:** Hi!\n**Assistant:** Hello!", "Hi!"),
    ("Great. Great. Great. Really great.", "Great. Really great."),
    ("Line one.\nLine two.", "Line one.\nLine two."),
    ("Conversation so far:\nI love cats.\nYour next message:", "I love cats."),
])
def test_clean(raw, expected):
    assert review(raw, "user")[0] == expected


def test_stage_directions_in_both_voices_are_cleaned_and_kept_in_the_metadata(task):
    ctx = make_ctx(task, chat=lambda m, **o: "(laughs) Mostly green tea. *sips*", name="lm/assistant/naive")
    step = STAGES["lm/assistant/naive"](record_with(("user", "Green or black?")), ctx)["steps"][-1]
    assert step["content"] == "Mostly green tea." and step["metadata"]["cleaned"] == ["stage direction"]
    replies = iter(["(smiling knowingly)", "*leans back in chair* Any tips for oolong?"])
    ctx = make_ctx(task, chat=lambda m, **o: next(replies), name="lm/user/guided")
    step = STAGES["lm/user/guided"](record_with(("scenario", "s")), ctx)["steps"][-1]
    assert step["content"] == "Any tips for oolong?" and len(ctx["calls"]) == 2  # nothing left the first time: asked again


def test_a_task_can_turn_a_gate_off(task):
    task["quality"] = {"gates": {"stage_direction": False}}
    ctx = make_ctx(task, chat=lambda m, **o: "(laughs) Mostly green tea.", name="lm/assistant/naive")
    assert STAGES["lm/assistant/naive"](record_with(("user", "Green or black?")), ctx)["steps"][-1]["content"] == \
        "(laughs) Mostly green tea."


def test_parse_eligibility_finds_json_inside_prose():
    names, reasoning = parse_eligibility('Sure: {"eligible": ["a", 3], "reasoning": "r"} done')
    assert names == {"a"} and reasoning == "r"


def test_custom_stage_registers_by_decorator():
    @stage("test/noop")
    def noop(record, ctx):
        return record

    assert STAGES["test/noop"] is noop
    del STAGES["test/noop"]
