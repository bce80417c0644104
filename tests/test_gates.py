"""The quality gates (chitchat_gen/gates.py) on their own, then in the stages with a scripted
chat function, the judge, and the duplicate memory a resumed run starts from."""

import collections
import json
import pickle
import random
import subprocess
import sys
import threading

import pytest
from conftest import ROOT, outputs, run_cli
from fake_lm import canned_reply, fake_chat
from test_stages import make_ctx, record_with

from chitchat_gen import generate, load_task
from chitchat_gen.dedupe import CopyIndex, pinned
from chitchat_gen.gates import (
    GATE_NAMES,
    GATES,
    KINDS,
    PHRASES,
    cut_after_goodbye,
    echoes,
    is_closing,
    parrots,
    review,
    reviewer,
    settings,
)
from chitchat_gen.pipeline import run_conversation
from chitchat_gen.plug import new_memory
from chitchat_gen.record import messages as messages_of
from chitchat_gen.stages import STAGES
from chitchat_gen.stats import dataset_stats


@pytest.fixture
def task(task_dir):
    return load_task(task_dir / "task.yaml")


def clean(text, kind="user"):
    return review(text, kind)[:2]


def problems(text, kind, previous=""):
    return review(text, kind, previous=previous)[2]


CLEAN_CASES = [
    ("Chat: 2019-3457 #contests\nI love contests, do you?", "I love contests, do you?", ["leaked label"]),
    ("Situation: The user is going home.\nHeading home now, any podcast tips?", "Heading home now, any podcast tips?", ["leaked label"]),
    ("Tea is great.\n\nTea is great.\nCoffee too.", "Tea is great.\n\nCoffee too.", ["repeated paragraph"]),  # the gap stays
    ("Bread is easy to bake at home.\nBread is easy to bake at home!", "Bread is easy to bake at home.", ["repeated paragraph"]),
    ("Nice! Nice! What next?", "Nice! What next?", ["repeated sentence"]),
    ("Bye, thanks!\nThis is your last message: wrap up.", "Bye, thanks!", ["leaked label"]),
    ("Persona: a cook.", "Persona: a cook.", []),  # nothing else left: kept, for `problems` to name
    # lines the first reading of the output found (docs/quality.md, section 4)
    ("Great jazz album!\nChat to: writer123", "Great jazz album!", ["leaked label"]),
    ("Thanks!\nYour last message: Wrap up in a sentence or two", "Thanks!", ["leaked label"]),
    ("Here's your next message:\nThank you again!", "Thank you again!", ["leaked label"]),
    ("Conversation to the Assistant:\nI found a new game.", "I found a new game.", ["leaked label"]),
    ("No more words needed. Thank you.\nYour answer:", "No more words needed. Thank you.", ["leaked label"]),
    ("The end. Thank you!\nEnding my message: thanks!", "The end. Thank you!", ["leaked label"]),
    ("Bye now.\nYour closing message: Thank you for your love!", "Bye now.", ["leaked label"]),
]


@pytest.mark.parametrize("raw,text,fixes", CLEAN_CASES, ids=[c[0][:24] for c in CLEAN_CASES])
def test_clean_removes_what_is_safe_and_names_it(raw, text, fixes):
    assert clean(raw) == (text, fixes)


# The misses of issue 24 (a quick start read in the viewer), then shapes of our own.
STAGE_DIRECTIONS = [
    ("(laughs) That's so true!", "That's so true!"),
    ("I love that idea (smiling knowingly).", "I love that idea."),
    ("(excitedly) Oh, I can't wait to try it!", "Oh, I can't wait to try it!"),
    ("*smiles* Thanks for the tip.", "Thanks for the tip."),
    ("*leans back in chair* Well, that takes me back.", "Well, that takes me back."),
    ("Great question! (nodding) Start with the soil.", "Great question! Start with the soil."),
    ("That made my day. *grins*", "That made my day."),
    ("(laughs again, but this time in a different way) I'm so glad you care.", "I'm so glad you care."),
    # seen in a SmolLM2 run read by hand (issue 24)
    ("Look at this! (pointing at the camera) It's my garden.", "Look at this! It's my garden."),
    ("(noticing your smile) You seem happy today.", "You seem happy today."),
    ("Sure, I'll try it (with a smile).", "Sure, I'll try it."),
]


@pytest.mark.parametrize("raw,text", STAGE_DIRECTIONS, ids=[c[0][:24] for c in STAGE_DIRECTIONS])
@pytest.mark.parametrize("kind", ["assistant", "closing"])  # "user": with the other cleanings below
def test_stage_directions_are_cleaned_from_every_speaker(raw, text, kind):
    assert review(raw, kind)[:2] == (text, ["stage direction"])


@pytest.mark.parametrize("raw", ["(laughs)", "*smiles warmly*", "(excitedly) ...", "*smiles* (laughs)"])
def test_a_message_that_is_only_stage_directions_is_a_problem(raw):
    assert review(raw, "user")[2] == ["stage direction"]


ORDINARY_ASIDES = [
    ("I saw it (twice!) last year.", "user"),
    ("Try the soup (see the menu) if you're hungry.", "assistant"),
    ("I eat (mostly) vegetables these days.", "user"),
    ("I made soup (with a friend) yesterday.", "user"),
    ("I'm a *huge* fan of jazz.", "user"),
    ("**Tip:** water it in the morning.", "assistant"),
    ("Here are three ideas (including a cheap one): walk, read, bake.", "assistant"),
    ("I joined a club (we chat every Tuesday) last year.", "user"),
    ("1) Soak the beans. 2) Cook them slowly.", "assistant"),
]


@pytest.mark.parametrize("text,kind", ORDINARY_ASIDES, ids=[c[0][:24] for c in ORDINARY_ASIDES])
def test_ordinary_parentheses_and_asterisks_stay(text, kind):
    assert review(text, kind) == (text, [], [])


META_NOTES = [
    ("Sounds lovely! (next message to the assistant is about the weather)", "Sounds lovely!"),
    ("(reminder: don't include yourself in this chat) I tried the recipe last night.", "I tried the recipe last night."),
    ("Here is a continuation of the previous message. The bread rose twice.", "The bread rose twice."),
    ("This is a continuation of an ongoing conversation. I'm glad you came.", "I'm glad you came."),
    ("(Note: keep it short) See you at the market.", "See you at the market."),
    # seen in a SmolLM2 run read by hand (issue 24)
    ("The following is the message to be written:\nI love the smell of fresh bread.", "I love the smell of fresh bread."),
    ('Great tips! The original message was: "Hey, I just wanted to talk."', "Great tips!"),
    ("I'll try it. Please feel free to remove this text from the context.", "I'll try it."),
    ("Sounds fun (what is the message?) and easy.", "Sounds fun and easy."),
]


def test_talk_about_a_message_that_is_not_about_the_chat_stays():
    for text in ("The message is clear: eat more greens.", "The last message you sent made me laugh.",
                 "My friend left a message (the one about the party) on my phone."):
        assert review(text, "user")[:2] == (text, [])


def test_a_message_that_is_only_a_meta_note_is_a_problem():
    assert review("(the user has a great idea and wants to share it!)", "assistant")[2] == ["note about the chat"]
    assert review("Here is a continuation of the previous message.", "user")[2] == ["note about the chat"]


SPEAKER_LABELS = [
    ("Auntie Jane: Oh, that sounds wonderful!", "Oh, that sounds wonderful!"),
    ("Grandma: I made soup today.", "I made soup today."),
    ("Dr. Patel: Rest and fluids, mostly.", "Rest and fluids, mostly."),
    ("**User:** What should I read next?", "What should I read next?"),
    ("Me: hi there, any plans?", "hi there, any plans?"),
    ("The person: night-shift nurse in Manchester, interested in sleep.", "night-shift nurse in Manchester, interested in sleep."),
]

CLEANINGS = ([(*case, "stage direction") for case in STAGE_DIRECTIONS] + [(*case, "note about the chat") for case in META_NOTES]
             + [(*case, "speaker label") for case in SPEAKER_LABELS])


@pytest.mark.parametrize("raw,text,label", CLEANINGS, ids=[c[0][:24] for c in CLEANINGS])
def test_stage_directions_meta_notes_and_speaker_labels_are_cleaned_when_the_rest_stands(raw, text, label):
    assert review(raw, "user")[:2] == (text, [label])


@pytest.mark.parametrize("text", ["Update: I tried it and it worked!", "Mum said: no more cake.", "Honestly: best day ever."])
def test_a_word_and_a_colon_is_not_a_speaker_label(text):
    assert review(text, "user") == (text, [], [])


PROBLEM_CASES = [
    ("Please visit [insert location here] tomorrow.", "user", "", ["placeholder"]),
    ("Hi <name>, how was your day?", "assistant", "", ["placeholder"]),
    ("We meet at {{time}}.", "assistant", "", ["placeholder"]),
    ("[Insert chat about a recent issue with the landlord]", "user", "", ["placeholder"]),
    ("Persona: a cook who loves bread.", "user", "", ["leaked label"]),
    ("I'd be delighted to assist you with your travel plans.", "user", "", ["assistant's voice"]),
    ("Let me know if you need anything else!", "user", "", ["assistant's voice"]),
    ("I'd be delighted to assist you with your travel plans.", "assistant", "", []),  # fine for the assistant
    ("You asked: what is the best way to keep basil alive indoors? Water it often.", "assistant",
     "What is the best way to keep basil alive indoors?", ["echo of the user"]),
    ("Basil likes sun and moist soil; water it when the top feels dry.", "assistant",
     "What is the best way to keep basil alive indoors?", []),
    ("My sister [who lives in Leeds] visited.", "user", "", []),  # brackets are not placeholders
    ("I'm so thrilled to help you with your health and wellness goals.", "user", "", ["assistant's voice"]),
    ("I'm excited to help you with your new recipe!", "user", "", ["assistant's voice"]),
    ("I'm a friendly AI designed to help with any kind of feedback.", "user", "", ["assistant's voice"]),
    ("Hi, I'm happy to be of service! Thanks so much for the planning.", "user", "", ["assistant's voice"]),
    ("I'm thrilled to be your assistant today.", "user", "", ["assistant's voice"]),
    ("I'm so excited to try your recipe tonight!", "user", "", []),
    # issue 24: the user in the assistant's voice, an assistant repeating the user word for word
    ("Hi there! What can I do for you?", "user", "", ["assistant's voice"]),
    ("So, what would you like to talk about today?", "closing", "", ["assistant's voice", "fails the closing check"]),
    ("What can I do for you?", "assistant", "", []),  # the assistant may ask it
    ("I love hiking in the rain.", "assistant", "I love hiking in the rain.", ["echo of the user"]),
    ("Good morning!", "assistant", "Good morning!", ["echo of the user"]),
    ("I love hiking in the rain. Me too, it clears the head!", "assistant", "I love hiking in the rain.",
     ["echo of the user"]),
    ("Hiking in the rain clears the head.", "assistant", "I love hiking in the rain.", []),
]


@pytest.mark.parametrize("text,role,previous,found", PROBLEM_CASES, ids=[c[0][:24] for c in PROBLEM_CASES])
def test_problems_are_named(text, role, previous, found):
    assert problems(text, role, previous) == found


CLOSINGS = [
    ("Thanks so much, that helps!", True),
    ("OK, bye for now", True),
    ("Perfect, thank you! I'll let you know if my flatmates survive the pepper.", True),  # cue one sentence back
    ("What else can I plant in spring?", False),
    ("Thanks! And what else can I plant in spring?", False),  # asks something new
    ("Thank the assistant or someone in a similar role for their help with sambu cake.", False),  # parroted
    ("Same to you, just in a different way. I'll take care of that!", False),  # not a goodbye phrase
    ("Thank you for your last message. I'm glad you enjoyed it. Here is more. And more. And more.", False),
    ("I'll add a small text that says thank you. You're all ready for something exciting!", False),  # about it
    ('A smile on the other end, a confident "Thanks" is fitting.', False),  # quoted, not said
    ("My pleasure, my friend. I'd love to see you there with Max!", False),
    ("I just wanted to say thank you!", True),
    ("I want to thank you for everything. See you soon!", True),
    ("Your choice. Just say goodbye, and we're both ready to start again next month.", False),
    ('This is an important one: "Your help makes it possible. Thank you."', False),  # the thanks is quoted
    ("Thanks. " + "I loved every part of the story about the old mill and the river. " * 5, False),  # too long
    # issue 24: "grateful" alone is no goodbye
    ("I'll always be grateful for the people who inspire me.", False),
    ("I'm so grateful for your help today.", True),
]


@pytest.mark.parametrize("text,closes", CLOSINGS, ids=[c[0][:24] for c in CLOSINGS])
def test_a_closing_passes_the_closing_check(text, closes):
    assert is_closing(text) is closes


def test_a_task_can_add_closing_cues():
    assert not is_closing("A presto, amici!")
    assert is_closing("A presto, amici!", settings(phrases={"closing_cues": ["a presto"]}))


def test_a_closing_that_runs_on_is_cut_after_the_goodbye():
    assert cut_after_goodbye("Lovely. Thanks, bye! PS: what is your favourite colour?") == "Lovely. Thanks, bye!"
    assert cut_after_goodbye("Great, thanks! I'll try it tomorrow.") == "Great, thanks! I'll try it tomorrow."
    assert cut_after_goodbye("What else can I plant?") == "What else can I plant?"


def test_a_parroted_instruction_is_caught():
    instruction = "This is your last message: wrap up in a sentence or two, and ask nothing new."
    assert parrots("OK. Wrap up in a sentence or two. Bye!", instruction)
    assert not parrots("Thanks, this was your last tip I needed. Bye!", instruction)


NOT_SCENARIOS = ["I'm so glad I could help!", "What a dream. I'd love to be that person!", "How about this:",
                 "My friend is a world-renowned artist.", "Would a retired teacher like astronomy?",
                 "Thanks! A retired teacher wants to chat about birds."]


@pytest.mark.parametrize("text", NOT_SCENARIOS)
def test_a_reply_is_not_a_scenario(text):
    assert review(text, "scenario", earlier=[])[2] == ["not a scenario"]


@pytest.mark.parametrize("text", ["A retired teacher wants to chat about birdwatching.",
                                  "Two flatmates in Leeds plan a cheap weekend trip.",
                                  "On a rainy Sunday, a nurse wants a new soup recipe."])
def test_a_scenario_is_a_scenario(text):
    assert review(text, "scenario", earlier=[]) == (text, [], [])


def test_the_gate_table_is_one_row_per_gate_with_unique_labels():
    assert len(set(GATE_NAMES)) == len(GATES) == len({g["label"] for g in GATES})
    for row in GATES:
        assert set(row["reads"]) <= set(KINDS) and callable(row["check"]) and row["needs"] in ("", "earlier", "instruction")


# A message each gate acts on, by gate name (test_stats counts each in a dataset too).
GATE_EXAMPLES = {
    "next_speaker": ("Nice!\nUser: more", "user"), "speaker_label": ("User: Nice!", "user"),
    "leaked_label": ("Hint: be nice.\nNice!", "user"), "meta_note": ("Nice! (note: be brief)", "user"),
    "stage_direction": ("(laughs) Nice!", "user"), "repeated_paragraph": ("Nice one.\nNice one.", "user"),
    "first_line": ("A cook bakes.\nMore.", "scenario"), "quotes": ('"Nice!"', "user"),
    "repeated_sentence": ("Nice! Nice!", "user"), "after_goodbye": ("Bye! And what about roses?", "closing"),
    "placeholder": ("Hi [your name].", "user"), "assistant_voice": ("How can I help you?", "user"),
    "echo": ("Tell me about bread.", "assistant"), "parrot": ("Write your next message now please.", "user"),
    "not_a_goodbye": ("Roses are red.", "closing"), "not_a_scenario": ("I love it!", "scenario"),
    "copy": ("A cook bakes bread at home.", "scenario"), "near_duplicate": ("A cook bakes bread at home.", "scenario"),
    "question_after_goodbye": ("Bye! Want a recipe?", "farewell"), "instruction_list": ("1. Ask a question.\n2. Keep it short.", "user"),
    "user_voice": ("Fellow bakers! Bread is great.", "assistant"),
}
PREVIOUS = "Tell me about bread."  # the user message an assistant example answers


@pytest.mark.parametrize("name", GATE_NAMES)
def test_every_gate_can_be_turned_off(name):
    assert set(GATE_EXAMPLES) == set(GATE_NAMES)
    text, kind = GATE_EXAMPLES[name]
    extra = dict(previous=PREVIOUS, instruction="Write your next message now please.",
                 earlier=["A cook bakes bread at home."], near_duplicate=0.5)
    label = next(g["label"] for g in GATES if g["name"] == name)
    on, off = review(text, kind, **extra), review(text, kind, settings(gates={name: False}), **extra)
    assert label in on[1] + on[2] and label not in off[1] + off[2]


def test_a_task_adds_phrases_to_any_list_and_sets_thresholds():
    given = settings(phrases={"stage_directions": ["ponders"], "assistant_voice": ["at thy service"],
                              "speaker_labels": ["narrator"], "placeholders": ["blank"]}, echo_share=0.9)
    assert review("(ponders) Maybe tea.", "user", given)[:2] == ("Maybe tea.", ["stage direction"])
    assert review("I am at thy service.", "user", given)[2] == ["assistant's voice"]
    assert review("Narrator: it rained.", "user", given)[:2] == ("it rained.", ["speaker label"])
    assert review("Meet me at [blank].", "user", given)[2] == ["placeholder"]
    assert set(PHRASES) == set(given["phrases"])
    assert not echoes("Bread is easy to bake: flour, water, salt, time.", "Is bread easy to bake with flour and water?", 0.9)


def test_a_seed_copied_with_one_sentence_added_is_a_copy():
    seed = "A nervous new cat owner wants to stop her kitten from shredding the living-room sofa."
    assert pinned([seed]).copy_of(seed + " She also asks about toys.") == seed
    assert pinned([seed]).copy_of("A retired teacher wants to plan a walking holiday in the Lake District.") is None
    assert not echoes("Sure.", "Short one?")  # too short to call an echo


LONG = ("A retired airline pilot who now lives on a small farm in Devon wants to chat about the unusual clouds he "
        "photographed over the hills that morning and what caused them.")


def held(task, *earlier, limit=1000) -> CopyIndex:
    """The copy check's memory as the stage has it: the task's seeds pinned, then `earlier` added."""
    index = CopyIndex(limit=limit)
    index.pin(task["seed_scenarios"])
    for text in earlier:
        index.add(text)
    return index


def varied(k: int) -> str:
    """The k-th of many scenarios that share a frame and nothing else."""
    return f"A person who keeps {k} goats in Town{k % 97} wants to chat about hobby{k} and place{k * 7} with a friend."


def test_the_same_sentence_on_another_topic_is_not_a_copy(task):
    new, earlier = "A retired teacher wants to chat about birdwatching.", "A retired teacher wants to chat about astronomy."
    assert held(task, earlier).copy_of(new) is None
    assert pinned([earlier]).copy_of(new) is None  # nothing else held to weigh its words by: still not a copy
    assert held(task, earlier).copy_of(earlier) == earlier


@pytest.mark.parametrize("rewrite", [
    lambda seed: seed,
    lambda seed: seed + " She also asks which toys keep a kitten busy.",
    lambda seed: seed.replace("shredding", "scratching"),
], ids=["verbatim", "a sentence added", "a word changed"])
def test_a_seed_copied_is_a_copy(task, rewrite):
    seed = task["seed_scenarios"][0]
    assert seed.startswith("A nervous new cat owner wants to stop her kitten from shredding")
    assert held(task).copy_of(rewrite(seed)) == seed


def test_a_long_scenario_with_two_words_changed_is_a_copy(task):
    rewrite = LONG.replace("Devon", "Cornwall").replace("unusual", "strange")
    assert held(task, LONG).copy_of(rewrite) == LONG
    other_person = LONG.replace("airline pilot who now lives on a small farm in Devon", "baker who just moved to Glasgow")
    assert held(task, LONG).copy_of(other_person) is None


def test_the_index_finds_a_copy_remembered_900_scenarios_ago_and_forgets_past_its_limit(task):
    index = held(task, LONG, *map(varied, range(899)))
    assert len(index) == 900 and index.texts()[0] == LONG
    assert index.copy_of(LONG.replace("Devon", "Cornwall")) == LONG
    assert index.copy_of(varied(5).replace("a friend", "my friend")) == varied(5)
    assert index.copy_of(varied(5000)) is None
    for k in range(899, 1000):
        index.add(varied(k))  # LONG is the 1,001st most recent now: dropped
    assert len(index) == 1000 and index.copy_of(LONG) is None


def test_memory_rebuilt_from_records_still_catches_a_copy(task):
    records = [record_with(("scenario", text)) for text in [LONG, *map(varied, range(50))]]
    reply = LONG.replace("unusual", "strange")

    def scenario_stage(memory):
        ctx = make_ctx(task, chat=lambda m, **o: reply, name="lm/scenario")
        ctx["memory"] = memory
        return STAGES["lm/scenario"](record_with(), ctx), len(ctx["calls"])

    assert scenario_stage(new_memory(records)) == ("scenario: copies a seed or an earlier scenario", 2)
    assert isinstance(scenario_stage(new_memory())[0], dict)  # a new run's memory accepts it


def test_the_index_pickles_for_ray_workers_and_still_finds_copies(task):
    index = pickle.loads(pickle.dumps(held(task, LONG)))
    assert index.copy_of(LONG.replace("Devon", "Cornwall")) == LONG
    index.add(varied(1))  # a lock of its own
    assert index.texts() == [LONG, varied(1)]


def test_threads_add_and_check_at_once(task):
    index, failed = held(task, limit=200), []

    def work(start):
        try:
            for k in range(start, start + 300):
                index.copy_of(varied(k))
                index.add(varied(k))
        except Exception as error:  # noqa: BLE001 - a thread's error is the test's failure
            failed.append(error)

    threads = [threading.Thread(target=work, args=(n * 300,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failed and len(index) == len(index.texts()) == 200
    assert index.used == collections.Counter(word for _, words, _, _ in index.held.values() for word in words)


def test_the_closing_turn_uses_the_patterns_hint_and_must_close(task):
    closing = next(p for p in task["iteration_stages"][0]["patterns"] if p["name"] == "chit_chat/termination")
    asked = []

    def chat(messages, json_schema=None, **options):
        if "role-playing a human user" in messages[0]["content"]:
            asked.append(messages[-1]["content"])
            return "What other plants should I try?"  # never says goodbye
        return canned_reply(messages, json_schema)

    ctx = make_ctx(task, chat=chat, name="lm/flow_controller", turn=4)
    record = record_with(("scenario", "A gardener chats."), ("user", "Hi"), ("assistant", "Hello"))
    STAGES["lm/flow_controller"](record, ctx)
    assert record["steps"][-1]["hint"] == closing["hint"]
    ctx["stage"] = next(s for s in task["iteration_stages"] if s["name"] == "lm/user/guided")
    assert STAGES["lm/user/guided"](record, ctx) == "user message: fails the closing check"
    assert len(asked) == ctx["stage"]["closing_attempts"] == 6  # short calls, so more of them than for other turns
    assert all("This is your last message" in prompt and '"Hello"' in prompt and "Hi" not in prompt for prompt in asked)
    assert all(call["max_tokens"] <= 64 for call in ctx["calls"][-6:])


def closing_turn(task, replies):
    """The user stage on a closing turn, answered by `replies` in order."""
    replies = iter(replies)
    ctx = make_ctx(task, chat=lambda m, **o: next(replies), name="lm/user/guided")
    record = record_with(("scenario", "A gardener chats."), ("user", "Hi"), ("assistant", "Hello"))
    record["steps"].insert(1, {"role": "flow_controller", "terminate": True, "hint": "Say goodbye.", "content": "x"})
    return STAGES["lm/user/guided"](record, ctx)


def test_the_closing_is_cut_after_the_goodbye_and_parroting_is_asked_again(task):
    record = closing_turn(task, ["Say goodbye. This is your last message: you are done. Bye!",
                                 "Thanks for the tips, bye! Also, what about roses?"])
    step = record["steps"][-1]
    assert step["content"] == "Thanks for the tips, bye!"
    assert step["metadata"]["cleaned"] == ["text after the goodbye"]
    assert closing_turn(task, ["(waves) Thanks for everything, bye!"])["steps"][-1]["metadata"]["cleaned"] == \
        ["stage direction"]
    assert closing_turn(task, ["OK, you are done chatting and leave now. Bye!"] * 6) == \
        "user message: instruction copied"


def test_a_problem_is_asked_again_once_then_drops_with_its_name(task):
    replies = iter(["Sure, [insert city] is great.", "Sure, [insert city] is great."])
    ctx = make_ctx(task, chat=lambda m, **o: next(replies), name="lm/assistant/naive")
    assert STAGES["lm/assistant/naive"](record_with(("user", "Where should I go?")), ctx) == "assistant message: placeholder"
    replies = iter(["Sure, [insert city] is great.", "Try Porto: the food is great."])
    ctx = make_ctx(task, chat=lambda m, **o: next(replies), name="lm/assistant/naive")
    record = STAGES["lm/assistant/naive"](record_with(("user", "Where should I go?")), ctx)
    assert record["steps"][-1]["content"] == "Try Porto: the food is great."
    assert "temperature" not in ctx["calls"][0]  # asked again a little warmer
    assert ctx["calls"][1]["temperature"] == pytest.approx(task["engine"]["temperature"] + 0.3)


def test_what_clean_removed_is_kept_in_the_steps_metadata(task):
    ctx = make_ctx(task, chat=lambda m, **o: "Context: a chat.\nTry Porto.\nTry Porto.", name="lm/assistant/naive")
    record = STAGES["lm/assistant/naive"](record_with(("user", "Where should I go?")), ctx)
    assert record["steps"][-1]["content"] == "Try Porto."
    assert record["steps"][-1]["metadata"]["cleaned"] == ["leaked label", "repeated paragraph"]


def judged_task(task, min_score=None):
    task["finalization_stages"] = [{"name": "lm/judge", "min_score": min_score, "where": "finalization_stages[0]"}]
    return task


def judge_chat(scores):
    def chat(messages, json_schema=None, **options):
        if json_schema and "coherence" in json_schema["properties"]:
            return json.dumps(scores) if isinstance(scores, dict) else scores
        return fake_chat(messages, json_schema)
    return chat


def test_the_judge_writes_scores_and_min_score_drops(task):
    scores = {"coherence": 4, "persona": 2, "naturalness": 3, "closing": 5, "reason": "ok"}
    ctx = {"task": judged_task(task), "chat": judge_chat(scores), "rng": random.Random(0), "memory": new_memory(),
           "review": reviewer(task)}
    record, reason = run_conversation(task, ctx)
    assert reason is None and record["scores"] == scores
    ctx = {"task": judged_task(task, 3.6), "chat": judge_chat(scores), "rng": random.Random(0), "memory": new_memory(),
           "review": reviewer(task)}
    assert run_conversation(task, ctx) == (None, "lm/judge: judge score below min_score")


def test_an_unusable_judge_reply_keeps_the_conversation_unscored_unless_min_score(task):
    ctx = {"task": judged_task(task), "chat": judge_chat("not json"), "rng": random.Random(0), "memory": new_memory(),
           "review": reviewer(task)}
    record, reason = run_conversation(task, ctx)
    assert reason is None and "scores" not in record
    ctx = {"task": judged_task(task, 2), "chat": judge_chat("not json"), "rng": random.Random(0), "memory": new_memory(),
           "review": reviewer(task)}
    assert run_conversation(task, ctx) == (None, "lm/judge: judge reply unusable")


def test_stats_count_closing_checks_gate_finds_and_scores(task_dir, server):
    raw = (task_dir / "task.yaml").read_text() + "finalization_stages:\n  - name: lm/judge\n"
    (task_dir / "task.yaml").write_text(raw)
    assert run_cli("-n", 3, "--base-url", server.url, "--quiet", cwd=task_dir).returncode == 0
    out = task_dir / "output/public/examples/chit_chat"
    stats = dataset_stats(out / "final_data.jsonl", load_task(task_dir / "task.yaml"))
    assert stats["passes_closing_check"] == 3 and stats["gates"]["placeholder"] == 0
    assert stats["judge"]["judged"] == 3  # the fake server's judge answers
    lines = (out / "final_data.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    record["steps"][-2]["content"] = "Sure, I'd be happy to help with [insert topic]."  # a bad closing user turn
    record["steps"][-1]["content"] = "(smiles) " + record["steps"][-1]["content"]
    (out / "final_data.jsonl").write_text("\n".join([json.dumps(record)] + lines[1:]) + "\n")
    stats = dataset_stats(out / "final_data.jsonl")
    assert stats["passes_closing_check"] == 2
    assert stats["gates"]["placeholder"] == 1 and stats["gates"]["assistant_voice"] == 1
    assert stats["gates"]["not_a_goodbye"] == 1 and stats["gates"]["stage_direction"] == 1
    assert "parrot" not in stats["gates"] and "copy" not in stats["gates"]  # need what a dataset does not keep
    card = (out / "README.md").read_text()
    assert "the last user message passes the closing check in" in card and "stage direction (cleans)" in card


def test_a_resumed_run_does_not_repeat_an_opener_on_disk(task_dir, server):
    raw = (task_dir / "task.yaml").read_text().replace("  - name: lm/user/guided\n",
                                                        "  - name: lm/user/guided\n  - name: filter/unique_first_user\n")
    (task_dir / "task.yaml").write_text(raw)
    assert run_cli("-n", 3, "--base-url", server.url, "--quiet", cwd=task_dir).returncode == 0
    first = [m["content"] for r in outputs(task_dir)[1] for m in r["messages"] if m["role"] == "user"][:1]
    memory = new_memory(outputs(task_dir)[0])
    assert len(memory["scenarios"]) == 3 and len(memory["first_users"]) == 3
    task = load_task(task_dir / "task.yaml")

    def same_opener(messages, json_schema=None, **options):
        if "role-playing a human user" in messages[0]["content"] and "nothing yet" in messages[-1]["content"]:
            return first[0]  # every new conversation opens like the first one on disk
        return fake_chat(messages, json_schema)

    stats = {}
    with pytest.raises(Exception, match="first user message repeats an earlier conversation"):
        list(generate(task, 1, chat=same_opener, memory=memory, stats=stats))
    assert stats["accepted"] == 0


def test_the_closing_benchmark_reasks_each_closing_turn_and_counts_passes(task_dir, server):
    assert run_cli("-n", 3, "--base-url", server.url, "--quiet", cwd=task_dir).returncode == 0
    data = task_dir / "output/public/examples/chit_chat/final_data.jsonl"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/closing.py"), str(data), "--engine", "ollama",
                           "--base-url", server.url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [line.split()[:3] for line in done.stdout.splitlines() if line.startswith(("history", "turn"))]
    assert rows == [["history", "0.7", "3/3"], ["turn", "0.7", "3/3"]]  # the fake says "Thanks a lot for chat k, bye!"


def test_a_cut_that_uncovers_another_label_is_cleaned_again():
    """Seen on SmolLM2: a prompt line above a named speaker; one pass of the gates left "Me: ...",
    which `stats` then counted in accepted data."""
    text, fixes, found = review("Here's my next message:\nMe: Thank you for your generosity and care!", "user")
    assert (text, found) == ("Thank you for your generosity and care!", [])
    assert set(fixes) == {"leaked label", "speaker label"}


# Issue 30: what the gates did to text people and capable models write.
PEOPLES_GOODBYES = ["nice talking to you!", "Well, I gotta go! Nice chatting with you!", "See you!", "hey sorry gotta go!",
                    "ok, nice talking to ya!", "Well, it was nice chatting with you", "It was great chatting with you, take care!",
                    "Alright, I should get going. Nice talking to you!", "This was fun, see you!",
                    "Great talking with you - enjoy the rest of your day!"]


@pytest.mark.parametrize("text", PEOPLES_GOODBYES)
def test_goodbyes_people_write_pass_the_closing_check(text):
    assert is_closing(text) and review(text, "closing") == (text, [], [])


@pytest.mark.parametrize("text", [
    "No, no more. I have a great day so far and you're not going anywhere...",  # a cue's words, not a wish
    "No, no thanks.", "No need to say goodbye, I still have a few questions.", "I don't have to go yet, tell me more.",
    "Thanks to the rain, I stayed in and read.", "Take care of the basics first: water and light.",
    "Can you tell me more about the second one? Thanks!",  # a thanks after a question thanks in advance
    "Nice talking to you! What else do you grow?",  # asks something new after the goodbye
])
def test_a_cue_that_is_denied_supposed_or_followed_by_a_question_does_not_close(text):
    assert not is_closing(text)


def test_a_question_before_the_goodbye_is_answered_by_leaving():
    assert is_closing("What about you? Anyway, I have to run, nice chatting!")


def test_the_closing_check_reads_the_end_of_a_message_that_answers_first():
    answer = "Construction is harder, we started at five every day and the site was freezing. "
    assert is_closing(answer * 4 + "Sorry, I have to go, it was nice talking to you!")
    assert not is_closing(answer * 4 + "Sorry, I have to go, it was nice talking to you!", settings(closing_sentences=4))


def test_a_user_asking_how_to_help_someone_speaks_as_the_user():
    assert review("My cousin just moved here. How can I help her settle in?", "user")[2] == []
    assert review("How can I help you today?", "user")[2] == ["assistant's voice"]
    seeds = [json.loads(line) for line in (ROOT / "seed_examples.jsonl").read_text().splitlines() if line.strip()]
    said = [s["content"] for record in seeds for s in record["steps"] if s["role"] == "user"]
    assert any("How can I help her settle in?" in text for text in said)
    assert [text for text in said if review(text, "user")[2]] == []


FORMATTED = [
    "Here is what I would try.\n\nStart small:\n\n- a walk\n- water\n\nThen see.",
    "Two ways:\n\n1. Soak the beans.\n2. Use a pressure cooker.\n\nSalt them at the end.",
    "Like this:\n\n```python\nfor x in xs:\n    print(x)\n\n    print(x)\n```\n\nThe indentation is what counts.",
    "A haiku:\n\n    Rain on the window\n    rain on the window\n\nI hope it clears up.",
]


@pytest.mark.parametrize("text", FORMATTED, ids=[t[:20] for t in FORMATTED])
@pytest.mark.parametrize("kind", ["user", "assistant"])
def test_paragraphs_lists_and_code_are_kept_as_written(text, kind):
    assert review(text, kind) == (text, [], [])


def test_a_gate_that_cuts_a_line_cuts_only_that_line():
    assert clean("Here is my plan.\n\nSituation: a rainy day.\n\n- read\n- bake") == \
        ("Here is my plan.\n\n- read\n- bake", ["leaked label"])
    assert clean("Tea first.\n\n(laughs)\n\nThen a walk (smiling) in the rain.") == \
        ("Tea first.\n\nThen a walk in the rain.", ["stage direction"])
    assert clean("Start here.\n\nStart here.\n\nThen stop.") == ("Start here.\n\nThen stop.", ["repeated paragraph"])
    assert clean("Lovely.  Thanks!\n\nBye! Also, roses?", "closing") == ("Lovely.  Thanks!\n\nBye!", ["text after the goodbye"])


def test_multi_paragraph_replies_keep_their_blank_lines_in_a_library_run(task):
    def chat(messages, json_schema=None, **options):
        reply = fake_chat(messages, json_schema)
        return reply.replace("Here is a friendly answer", "Here is a friendly answer.\n\n- one\n- two\n\nAnd") \
            if reply.startswith("Here is a friendly answer") else reply
    replies = [m["content"] for record in generate(task, 3, chat=chat, seed=1) for m in messages_of(record)
               if m["role"] == "assistant"]
    assert replies and all("\n\n- one\n- two\n\nAnd" in reply for reply in replies)


# The misses of a new user's 5 conversations on SmolLM2-135M (issue 30, item 4).
def test_a_leaked_instruction_as_the_user_turn_is_a_problem():
    assert review("Please modify the conversation to ask a new topic about gardening.", "user")[2] == ["note about the chat"]
    assert review("I love it. Please modify the conversation to ask a new topic.", "user")[:2] == \
        ("I love it.", ["note about the chat"])


def test_an_instruction_restated_as_a_numbered_list_is_a_problem():
    restated = "1. Open a new topic.\n2. Ask an open question about something the user cares about."
    assert review(restated, "user")[2] == ["instruction restated as a list"]
    for own in ("Here's my list:\n\n- tent\n- stove", "Two questions:\n\n1. How long should it rest?\n2. Can I freeze it?"):
        assert review(own, "user")[2] == []


def test_a_question_after_the_goodbye_is_cut_from_the_last_reply(task):
    assert clean("You're welcome! Do you bake often?\n\nTake care.", "farewell") == \
        ("You're welcome!\n\nTake care.", ["question after the goodbye"])
    assert review("Anything else I can help with?", "farewell")[2] == ["question after the goodbye"]
    replies = iter(["Glad to help! What will you bake next? Enjoy your day!"])
    ctx = make_ctx(task, chat=lambda m, **o: next(replies), name="lm/assistant/naive")
    record = record_with(("user", "Hi"), ("assistant", "Hello"), ("flow_controller", "chit_chat/termination"),
                         ("user", "Thanks, bye!"))
    record["steps"][2]["terminate"] = True
    step = STAGES["lm/assistant/naive"](record, ctx)["steps"][-1]
    assert step["content"] == "Glad to help! Enjoy your day!" and step["metadata"]["cleaned"] == ["question after the goodbye"]


def test_an_assistant_in_the_users_voice_is_a_problem():
    assert review("Fellow carpenters! Oak is the best wood for a first table.", "assistant")[2] == ["the user's voice"]
    assert review("Hello, fellow gardener! Tomatoes love sun.", "assistant")[2] == ["the user's voice"]
    assert review("Your fellow carpenters will love the oak table.", "assistant")[2] == []


def test_the_human_eval_benchmark_meets_the_targets():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/human_eval.py")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line.strip("| ").split(" | ") for line in done.stdout.splitlines() if line.startswith("| ")]
    gates = [row for row in rows if row[0].startswith("`") and row[0] != "`any gate`"]
    assert gates and all(float(share.split()[0]) <= 0.5 for row in gates for share in row[1:] if share != "-")
    people = next(row for row in rows if row[0].startswith("people's"))
    assert float(people[2]) >= 0.95 and float(people[6]) <= 0.05
    formatted = next(row for row in rows if row[0].startswith("ours, with paragraphs"))
    assert formatted[1] == formatted[2] == formatted[3]  # every message: no gate cut, returned as written
