"""Task-file and data-file validation: every problem is one ConfigError naming file, field and fix."""

import json

import pytest
import yaml
from conftest import run_cli

from chitchat_gen import extra_stages
from chitchat_gen import task as config
from chitchat_gen.errors import ConfigError
from chitchat_gen.gates import settings_for
from chitchat_gen.prompts import render_persona
from chitchat_gen.stages import MORE_STAGES, STAGES
from chitchat_gen.task import load_task


def write_task(task_dir, change):
    """Load the shipped task.yaml, apply `change(dict)`, write it back; return its path."""
    path = task_dir / "task.yaml"
    raw = yaml.safe_load(path.read_text())
    change(raw)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def flow(raw):
    return next(s for s in raw["iteration_stages"] if s["name"] == "lm/flow_controller")


def test_shipped_task_loads(task_dir):
    task = load_task(task_dir / "task.yaml")
    assert task["task_name"] == "public/examples/chit_chat"
    assert (task["min_turns"], task["max_turns"]) == (2, 4)
    assert len(task["personas"]) >= 40 and len(task["seed_scenarios"]) >= 8
    assert task["engine"]["type"] == "ollama" and task["engine"]["model"] == "granite4:3b"


def test_overrides_win_over_the_task_file(task_dir):
    task = load_task(task_dir / "task.yaml", model="llama3", base_url=["http://a:1,http://b:2"],
                     temperature=0.1, seed=5)
    assert task["engine"]["model"] == "llama3"
    assert task["engine"]["base_urls"] == ["http://a:1", "http://b:2"]
    assert task["engine"]["temperature"] == 0.1 and task["seed"] == 5


def test_a_misspelt_or_bad_override_names_the_keyword(task_dir):
    with pytest.raises(ConfigError, match="unknown override 'concurency' \\(did you mean 'concurrency'\\?\\)"):
        load_task(task_dir / "task.yaml", concurency=2)
    with pytest.raises(ConfigError, match=r"^price_out \(override\): expected a number >= 0 or null, got -2$"):
        load_task(task_dir / "task.yaml", price_out=-2)  # from Python: the keyword, not the flag


def test_only_rows_that_load_task_overrides_have_a_flag():
    # A flag on a row of another table (a stage's, a pattern's) would be parsed and then ignored.
    others = config.DATA_STORE_FIELDS + config.PATTERN_FIELDS + [s for fields in config.STAGE_FIELDS.values() for s in fields]
    assert [spec["name"] for spec in others if spec["flag"] or spec["override"]] == []


def test_every_stage_of_the_package_has_its_row_of_settings():
    ours = {name for name, fn in STAGES.items() if fn.__module__.startswith("chitchat_gen.")}
    assert set(config.STAGE_FIELDS) == ours
    assert {name: STAGES[name].__module__ for name in MORE_STAGES} == {
        name: f"chitchat_gen.{module}" for name, module in MORE_STAGES.items()}
    assert extra_stages.judge is STAGES["lm/judge"]


def test_switching_engine_drops_the_task_files_model(task_dir):
    engine = load_task(task_dir / "task.yaml", engine="openai")["engine"]
    assert engine["model"] is None and engine["base_urls"] == ["http://localhost:8000"]


def test_no_termination_pattern_loads_when_conversations_may_stop_without_closing(task_dir):
    path = write_task(task_dir, lambda r: (flow(r).update(termination_patterns=[]), r.update(close_at_max_turns=False)))
    assert flow(load_task(path))["termination_patterns"] == []


def test_env_vars_expand_in_data_paths(task_dir, monkeypatch):
    monkeypatch.setenv("MY_DATA", str(task_dir))
    task = load_task(write_task(task_dir, lambda r: r["seed_datastore"].update(data_path="${MY_DATA}/seed_examples.jsonl")))
    assert len(task["seed_scenarios"]) >= 8


def test_digit_bookkeeping_keys_are_accepted_with_a_note(task_dir):
    def change(raw):
        raw.update(created_by="someone", data_builder="core/conversation", runner_config={"x": 1})
        flow(raw).update(generator="generator", max_turns=6)
    task = load_task(write_task(task_dir, change))
    assert any("created_by" in note for note in task["notes"])


def test_a_tasks_quality_section_tunes_the_gates(task_dir):
    def change(raw):
        raw["quality"] = {"gates": {"stage_direction": False}, "phrases": {"closing_cues": ["a presto"]}, "echo_share": 0.8}
        next(s for s in raw["iteration_stages"] if s["name"] == "lm/user/guided")["closing_cues"] = ["ciao"]
    given = settings_for(load_task(write_task(task_dir, change)))
    assert given["gates"]["stage_direction"] is False and given["gates"]["echo"] is True
    assert given["phrases"]["closing_cues"][-2:] == ("a presto", "ciao") and given["echo_share"] == 0.8
    assert given["parrot_words"] == 5  # the default


def test_a_task_not_in_english_gets_one_note_on_the_phrase_lists(task_dir, server):
    """Printed by every run (not only with --verbose): it is news about the data, not an ignored setting."""
    english = run_cli("-n", 1, "--base-url", server.url, cwd=task_dir)
    write_task(task_dir, lambda r: r.update(language="de"))
    german = run_cli("-n", 1, "--base-url", server.url, "--restart", cwd=task_dir)
    assert english.returncode == german.returncode == 0, german.stderr
    assert "phrase lists are English" not in english.stderr
    assert [line for line in german.stderr.splitlines() if "phrase lists are English" in line] == \
        ["note: task.yaml: language: de: the quality gates' phrase lists are English; add phrases in your "
         "language under quality.phrases, or turn gates off under quality.gates (docs/quality.md)"]


TASK_CASES = [
    ("missing task_name", lambda r: r.pop("task_name"), "task_name: missing"),
    ("task_name escapes", lambda r: r.update(task_name="../../etc"), "task_name"),
    ("max_turns string", lambda r: r.update(max_turns="four"), "max_turns: expected a whole number >= 1, got 'four'"),
    ("max_turns bool", lambda r: r.update(max_turns=True), "max_turns: expected a whole number >= 1, got True"),
    ("min_turns zero", lambda r: r.update(min_turns=0), ">= 1"),
    ("min > max", lambda r: r.update(min_turns=5, max_turns=3), "min_turns (5) is greater than max_turns (3)"),
    ("unknown top key", lambda r: r.update(max_turn=3), "unknown key 'max_turn' (did you mean 'max_turns'?)"),
    ("unknown stage", lambda r: r["iteration_stages"].append({"name": "lm/asistant/naive"}), "unknown stage 'lm/asistant/naive' (did you mean 'lm/assistant/naive'?)"),
    ("stage without name", lambda r: r["iteration_stages"].append({"foo": 1}), "iteration_stages[3]: expected a mapping with a 'name'"),
    ("stages not a list", lambda r: r.update(iteration_stages="lm/user/guided"), "iteration_stages: expected a list"),
    ("unknown stage key", lambda r: r["initialization_stages"][1].update(num_icl_example=3), "did you mean 'num_icl_examples'"),
    ("negative icl", lambda r: r["initialization_stages"][1].update(num_icl_examples=-1), "num_icl_examples: expected a whole number >= 0"),
    ("dedup threshold out of range", lambda r: r["initialization_stages"][1].update(near_duplicate_threshold=1.5), "near_duplicate_threshold: expected a number in (0, 1]"),
    ("negative weight", lambda r: flow(r)["patterns"][0].update(weight=-0.5), "patterns[0].weight: expected a number >= 0"),
    ("string weight", lambda r: flow(r)["patterns"][0].update(weight="high"), "patterns[0].weight"),
    ("all weights zero", lambda r: [p.update(weight=0) for p in flow(r)["patterns"]], "at least one non-termination pattern needs a weight > 0"),
    ("only termination weighted", lambda r: [p.update(weight=0) for p in flow(r)["patterns"][:4]], "at least one non-termination pattern"),
    ("duplicate pattern", lambda r: flow(r)["patterns"].append(dict(flow(r)["patterns"][0])), "appears twice"),
    ("pattern without hint", lambda r: flow(r)["patterns"][1].pop("hint"), "patterns[1].hint"),
    ("pattern unknown key", lambda r: flow(r)["patterns"][1].update(wieght=1), "did you mean 'weight'"),
    ("no patterns", lambda r: flow(r).update(patterns=[]), "patterns: expected a non-empty list"),
    ("unknown termination", lambda r: flow(r).update(termination_patterns=["chit_chat/terminate"]), "'chit_chat/terminate' is not one of the patterns"),
    ("no termination pattern", lambda r: flow(r).update(termination_patterns=[]), "termination_patterns: none, so no conversation would get a closing turn although close_at_max_turns is true: name the closing pattern here"),
    ("judge_eligibility string", lambda r: flow(r).update(judge_eligibility="no"), "judge_eligibility: expected true or false"),
    ("generate_hint string", lambda r: flow(r).update(generate_hint="yes"), "generate_hint: expected true or false"),
    ("bad env var", lambda r: r["seed_datastore"].update(data_path="${NO_SUCH_VAR_XYZ}/s.jsonl"), "${NO_SUCH_VAR_XYZ} is not set"),
    ("missing personas file", lambda r: r["initialization_stages"][0]["persona_store"].update(data_path="nope.jsonl"), "nope.jsonl not found"),
    ("persona store without path", lambda r: r["initialization_stages"][0].update(persona_store={"type": "default"}), "persona_store.data_path"),
    ("no seed datastore", lambda r: r.pop("seed_datastore"), "lm/scenario learns from seed examples"),
    ("unknown engine type", lambda r: r["engine"].update(type="olama"), "engine.type: expected one of ollama, openai, local, got 'olama' (did you mean 'ollama'?)"),
    ("unknown engine key", lambda r: r["engine"].update(modle="x"), "did you mean 'model'"),
    ("bad base_url", lambda r: r["engine"].update(base_url="http://exa mple:11434"), "is not a URL"),
    ("negative temperature", lambda r: r["engine"].update(temperature=-1), "engine.temperature"),
    ("zero concurrency", lambda r: r["engine"].update(concurrency=0), "engine.concurrency"),
    ("fractional retries", lambda r: r["engine"].update(retries=2.5), "engine.retries: expected a whole number >= 0, got 2.5"),
    ("boolean concurrency", lambda r: r["engine"].update(concurrency=True), "engine.concurrency: expected a whole number >= 1 or null, got True"),
    ("zero timeout", lambda r: r["engine"].update(timeout=0), "engine.timeout: expected a number > 0, got 0"),
    ("url without scheme", lambda r: r["engine"].update(base_url="localhost:11434"), "engine.base_url: 'localhost:11434' is not a URL"),
    ("task_name not a string", lambda r: r.update(task_name=5), "task_name: expected a string, got 5"),
    ("store not a mapping", lambda r: r.update(seed_datastore="seeds.jsonl"), "seed_datastore: expected a mapping or null, got 'seeds.jsonl'"),
    ("unknown prompt", lambda r: r.update(prompts={"USER_SYSTEN": "x"}), "did you mean 'USER_SYSTEM'"),
    ("unknown quality key", lambda r: r.update(quality={"echo_shar": 0.5}), "quality: unknown key 'echo_shar' (did you mean 'echo_share'?)"),
    ("unknown gate", lambda r: r.update(quality={"gates": {"stage_directions": False}}),
     "quality.gates.stage_directions: unknown gate (did you mean 'stage_direction'?); known gates: next_speaker"),
    ("gate not a bool", lambda r: r.update(quality={"gates": {"echo": "off"}}), "quality.gates.echo: expected true or false, got 'off'"),
    ("unknown phrase list", lambda r: r.update(quality={"phrases": {"closing_cue": ["ciao"]}}),
     "quality.phrases.closing_cue: unknown phrase list (did you mean 'closing_cues'?); known lists: placeholders"),
    ("phrases not a list", lambda r: r.update(quality={"phrases": {"closing_cues": "ciao"}}),
     "quality.phrases.closing_cues: expected a list of words or phrases, got 'ciao'"),
    ("echo share out of range", lambda r: r.update(quality={"echo_share": 1.5}), "quality.echo_share: expected a number in (0, 1]"),
    ("quality not a mapping", lambda r: r.update(quality=["echo"]), "quality: expected a mapping, got ['echo']"),
    ("prompt variable typo", lambda r: r.update(prompts={"ASSISTANT_SYSTEM": "Hi. $scenaro"}), "prompts.ASSISTANT_SYSTEM: unknown variable $scenaro; this template knows: $scenario"),
    ("prompt stray dollar", lambda r: r.update(prompts={"ASSISTANT_SYSTEM": "Costs $ 5"}), "write $$ for a literal $"),
    ("prompt not a string", lambda r: r.update(prompts={"ASSISTANT_SYSTEM": 5}), "prompts.ASSISTANT_SYSTEM: expected a string"),
]


@pytest.mark.parametrize("name,change,message", TASK_CASES, ids=[c[0] for c in TASK_CASES])
def test_bad_task_files_name_the_problem(task_dir, name, change, message):
    path = write_task(task_dir, change)
    with pytest.raises(ConfigError) as error:
        settings_for(load_task(path))  # the task as a run reads it: its `quality:` section is the gates' to check
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_yaml_syntax_error_names_the_line(task_dir):
    (task_dir / "task.yaml").write_text("task_name: x\nmax_turns: [4\n")
    with pytest.raises(ConfigError, match=r"task.yaml line \d+: not valid YAML"):
        load_task(task_dir / "task.yaml")


def test_a_task_file_not_in_utf8_says_so(task_dir):
    (task_dir / "task.yaml").write_bytes("task_name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"task.yaml: not UTF-8 text \(.*\): save the file as UTF-8"):
        load_task(task_dir / "task.yaml")


def test_top_level_not_a_mapping(task_dir):
    (task_dir / "task.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_task(task_dir / "task.yaml")


def test_missing_task_file(tmp_path):
    with pytest.raises(ConfigError, match="not found: pass an existing file with --task-paths"):
        load_task(tmp_path / "nope.yaml")


PERSONA_CASES = [
    ("not json", "{role: cook}\n", "line 1: not valid JSON"),
    ("no role", '{"role": "cook"}\n{"domain": "x"}\n', "line 2: role: every persona needs"),
    ("role not string", '{"role": 3}\n', "line 1: role"),
    ("array line", '["cook"]\n', "line 1: expected a JSON object"),
    ("goals wrong type", '{"role": "cook", "goals": 3}\n', "goals: expected a list of strings"),
    ("trait out of range", '{"role": "cook", "personality": {"openness": 2}}\n', "personality.openness: expected a number in [-1, 1]"),
    ("unknown trait", '{"role": "cook", "personality": {"opennes": 0.2}}\n', "did you mean 'openness'"),
    ("expertise wrong type", '{"role": "cook", "expertise": 5}\n', "expertise: expected a string or null"),
    ("empty file", "\n", "no personas"),
]


@pytest.mark.parametrize("name,text,message", PERSONA_CASES, ids=[c[0] for c in PERSONA_CASES])
def test_bad_personas_name_file_and_line(task_dir, name, text, message):
    (task_dir / "personas.jsonl").write_text(text)
    with pytest.raises(ConfigError) as error:
        load_task(task_dir / "task.yaml")
    assert "personas.jsonl" in str(error.value) and message in str(error.value)


def test_personas_not_utf8(task_dir):
    (task_dir / "personas.jsonl").write_bytes(b'{"role": "cook"}\n{"role": "caf\xe9"}\n')
    with pytest.raises(ConfigError, match="personas.jsonl line 2: not UTF-8 text: save the file as UTF-8"):
        load_task(task_dir / "task.yaml")


@pytest.mark.parametrize("host,url", [("0.0.0.0", "http://0.0.0.0:11434"), ("gpu1:9999", "http://gpu1:9999"),
                                      ("https://ollama.example.org:443", "https://ollama.example.org:443")])
def test_ollama_host_is_honoured_with_ollamas_port(task_dir, monkeypatch, host, url):
    monkeypatch.setenv("OLLAMA_HOST", host)
    raw = yaml.safe_load((task_dir / "task.yaml").read_text())
    del raw["engine"]["base_url"]
    (task_dir / "task.yaml").write_text(yaml.safe_dump(raw))
    assert load_task(task_dir / "task.yaml")["engine"]["base_urls"] == [url]


def test_a_valid_prompt_override_is_used(task_dir):
    task = load_task(write_task(task_dir, lambda r: r.update(prompts={"ASSISTANT_SYSTEM": "Be brief. $scenario costs $$5"})))
    assert task["prompts"]["ASSISTANT_SYSTEM"].startswith("Be brief.")


def test_null_persona_fields_get_defaults(task_dir):
    (task_dir / "personas.jsonl").write_text('{"role": "cook", "goals": null, "personality": null, "expertise": null}\n')
    persona = load_task(task_dir / "task.yaml")["personas"][0]
    assert persona["goals"] == [] and persona["personality"]["openness"] == 0.0
    assert render_persona(persona) == "Role: cook."


SEED_CASES = [
    ("no steps", '{"conversation_id": "s1"}\n', "line 1: steps: expected a non-empty list"),
    ("wrong role", '{"steps": [{"role": "narrator", "content": "x"}]}\n', "steps[0].role: expected one of"),
    ("no scenario", '{"steps": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n', "no scenario step"),
    ("no assistant", '{"steps": [{"role": "scenario", "content": "s"}, {"role": "user", "content": "hi"}]}\n', "at least one user and one assistant"),
    ("content not string", '{"steps": [{"role": "scenario", "content": 4}]}\n', "steps[0].content: expected a string"),
    ("empty file", "", "no seed examples"),
]


@pytest.mark.parametrize("name,text,message", SEED_CASES, ids=[c[0] for c in SEED_CASES])
def test_bad_seeds_name_file_and_line(task_dir, name, text, message):
    (task_dir / "seed_examples.jsonl").write_text(text)
    with pytest.raises(ConfigError) as error:
        load_task(task_dir / "task.yaml")
    assert "seed_examples.jsonl" in str(error.value) and message in str(error.value)


def test_digit_shaped_seed_loads(task_dir):
    # The shape of DiGiT's seed records: persona fields under persona_role, stage algo/persona, extra keys.
    record = {"task_name": "t", "is_seed": True, "conversation_id": "seed-001", "branch_point": None,
              "steps": [{"role": "scenario", "content": "A student asks about volcanoes.", "stage_name": "lm/scenario",
                         "scores": {}, "metadata": {}, "scenario_family_id": "seed-001"},
                        {"role": "persona", "content": "Role: student.", "stage_name": "algo/persona",
                         "persona_role": "student", "target": "user"},
                        {"role": "flow_controller", "content": "chit_chat/new_topic", "terminate": False, "hint": "Ask."},
                        {"role": "user", "content": "Why do volcanoes erupt?"},
                        {"role": "assistant", "content": "Pressure from magma."}]}
    (task_dir / "seed_examples.jsonl").write_text(json.dumps(record) + "\n")
    assert load_task(task_dir / "task.yaml")["seed_scenarios"] == ["A student asks about volcanoes."]
