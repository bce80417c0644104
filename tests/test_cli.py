"""The command line as a user runs it: a subprocess against a real local fake Ollama server."""

import json

import pytest
import yaml
from conftest import outputs, read_jsonl, run_cli
from fake_lm import FakeServer
from test_engines import free_port_url

from chitchat_gen.cli import build_parser, eta
from chitchat_gen.record import last_step
from chitchat_gen.task import ENGINE_OVERRIDES, TASK_OVERRIDES, load_task

OUT = "output/public/examples/chit_chat"


def test_exactly_n_conversations_in_both_files(task_dir, server):
    result = run_cli("--task-paths", "task.yaml", "--num-outputs-to-generate", 10, "--restart",
                     "--base-url", server.url, "--concurrency", 6, cwd=task_dir)
    assert result.returncode == 0, result.stderr
    final, formatted = outputs(task_dir)
    assert len(final) == len(formatted) == 10
    assert [r["conversation_id"] for r in final] == [r["conversation_id"] for r in formatted]
    assert len({r["conversation_id"] for r in final}) == 10
    for record, lines in zip(final, formatted):
        assert record["is_seed"] is False and record["task_name"] == "public/examples/chit_chat"
        messages = lines["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
        assert 2 <= len(messages) // 2 <= 4
        assert record["steps"][-3]["role"] == "flow_controller" and record["steps"][-3]["terminate"]
    assert "10 accepted" in result.stdout and "LM calls" in result.stdout
    assert f"{OUT}/final_data.jsonl" in result.stdout
    assert all(body["stream"] is False for body in server.chat_requests())


def test_resume_keeps_earlier_conversations_and_adds_the_rest(task_dir, server):
    assert run_cli("-n", 3, "--base-url", server.url, cwd=task_dir).returncode == 0
    first = [r["conversation_id"] for r in outputs(task_dir)[0]]
    result = run_cli("-n", 5, "--base-url", server.url, cwd=task_dir)
    assert result.returncode == 0, result.stderr
    final, formatted = outputs(task_dir)
    assert [r["conversation_id"] for r in final][:3] == first
    assert len(final) == len(formatted) == 5
    assert "2 accepted (+3 from earlier runs)" in result.stdout


def test_nothing_to_do_when_the_files_hold_n_already(task_dir, server):
    assert run_cli("-n", 3, "--base-url", server.url, cwd=task_dir).returncode == 0
    before = (task_dir / OUT / "final_data.jsonl").read_bytes()
    calls = len(server.chat_requests())
    result = run_cli("-n", 2, "--base-url", server.url, cwd=task_dir)
    assert result.returncode == 0 and "already holds 3 conversations" in result.stdout
    assert (task_dir / OUT / "final_data.jsonl").read_bytes() == before
    assert len(server.chat_requests()) == calls


def test_restart_starts_from_zero(task_dir, server):
    assert run_cli("-n", 3, "--base-url", server.url, cwd=task_dir).returncode == 0
    old = {r["conversation_id"] for r in outputs(task_dir)[0]}
    assert run_cli("-n", 2, "--restart", "--base-url", server.url, cwd=task_dir).returncode == 0
    final, formatted = outputs(task_dir)
    assert len(final) == len(formatted) == 2 and not old & {r["conversation_id"] for r in final}


def test_dead_server_is_one_error_line_and_restart_keeps_the_old_outputs(task_dir, server):
    assert run_cli("-n", 2, "--base-url", server.url, cwd=task_dir).returncode == 0
    before = (task_dir / OUT / "final_data.jsonl").read_bytes()
    dead = free_port_url()
    result = run_cli("-n", 2, "--restart", "--base-url", dead, cwd=task_dir)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: cannot reach Ollama at {dead}: start it with 'ollama serve' (or use --engine local)"]
    assert (task_dir / OUT / "final_data.jsonl").read_bytes() == before


def test_missing_model_says_ollama_pull(task_dir):
    with FakeServer(models=["llama3:latest"]) as fake:
        result = run_cli("-n", 1, "--base-url", fake.url, cwd=task_dir)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: model 'granite4:3b' not found at ") and "run 'ollama pull granite4:3b'" in result.stderr
    assert "Traceback" not in result.stderr


def test_broken_task_file_is_one_error_line_before_any_call(task_dir, server):
    raw = yaml.safe_load((task_dir / "task.yaml").read_text())
    raw["min_turns"] = 9
    (task_dir / "task.yaml").write_text(yaml.safe_dump(raw))
    result = run_cli("-n", 1, "--base-url", server.url, cwd=task_dir)
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: task.yaml: min_turns (9) is greater than max_turns (4): lower min_turns or raise max_turns"
    assert server.requests == []


def test_missing_task_file(tmp_path):
    result = run_cli("--task-paths", "nope.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: task file nope.yaml not found: pass an existing file with --task-paths"


FLAG_CASES = [
    (("-n", 0), "argument -n/--num-outputs-to-generate: expected a whole number >= 1, got 0"),
    (("-n", "abc"), "argument -n/--num-outputs-to-generate: expected a whole number >= 1, got 'abc'"),
    (("--concurrency", 0), "argument --concurrency: expected a whole number >= 1, got 0"),
    (("--temperature", -1), "argument --temperature: expected a number >= 0, got -1.0"),
    (("--max-tokens", 2.5), "argument --max-tokens: expected a whole number >= 1, got '2.5'"),
    (("--base-url", "notaurl"), "argument --base-url: 'notaurl' is not a URL: expected http:// or https://, "
                                "a host and an optional port (e.g. http://notaurl)"),
    (("--base-url", "http://bad host"), "argument --base-url: 'http://bad host' is not a URL"),
    (("--engine", "olama"), "argument --engine: invalid choice: 'olama'"),
    (("--shard", "5/4"), "argument --shard: expected 1 <= I <= K"),
]


@pytest.mark.parametrize("flags,message", FLAG_CASES, ids=[" ".join(map(str, f)) for f, _ in FLAG_CASES])
def test_a_bad_flag_is_one_error_line_naming_the_flag_exit_2(task_dir, flags, message):
    result = run_cli(*flags, cwd=task_dir)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(f"Error: {message}")
    assert "task.yaml" not in result.stderr  # the flag is to blame, not the file
    assert not (task_dir / "output").exists()


def test_a_folder_given_as_the_task_file_says_it_is_a_folder(task_dir):
    result = run_cli("--task-paths", ".", cwd=task_dir)
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: task file . is a directory: pass the task file inside it, e.g. task.yaml"


def test_trace_offers_no_concurrency(task_dir):
    result = run_cli("trace", "--help", cwd=task_dir)
    assert result.returncode == 0 and "--seed" in result.stdout and "--concurrency" not in result.stdout


UNKNOWN_FLAGS = [
    (("--restrat",), "Error: unknown flag --restrat: did you mean --restart?"),
    (("-n", 2, "--concurency", 3), "Error: unknown flag --concurency: did you mean --concurrency?"),
    (("--base-urls=http://a:1",), "Error: unknown flag --base-urls: did you mean --base-url?"),
    (("--num-output", 3, "--frobnicate"), "Error: unknown flag --frobnicate: see 'python -m chitchat_gen --help'"),
    (("--api-key", "sk-not-for-stderr"), "Error: unknown flag --api-key: see 'python -m chitchat_gen --help'"),
    (("trace", "--concurrency", 2), "Error: unknown flag --concurrency: see 'python -m chitchat_gen trace --help'"),
    (("stats", "output", "--jsn"), "Error: unknown flag --jsn: did you mean --json?"),
    (("-n", 2, "extra"), "Error: unexpected argument 'extra': see 'python -m chitchat_gen --help'"),
]


@pytest.mark.parametrize("flags,message", UNKNOWN_FLAGS, ids=[" ".join(map(str, f)) for f, _ in UNKNOWN_FLAGS])
def test_an_unknown_flag_is_one_line_with_a_did_you_mean_exit_2(task_dir, flags, message):
    result = run_cli(*flags, cwd=task_dir)
    assert result.returncode == 2
    assert result.stderr == message + "\n"  # one line, no usage dump, only the flag (never its value)
    assert not (task_dir / "output").exists()


# A task file, and typos on one of its lines (1-based, as an editor numbers them) with what the
# error says. PyYAML fails on a later line for several (the next line, the next quote).
TYPO_BASE = """\
task_name: typo/test
max_turns: 4          # a turn is one user message + one reply
min_turns: 2
engine:
  type: ollama
  model: granite4:3b
  temperature: 0.7
initialization_stages:
  - name: sample/persona
    persona_store:
      data_path: personas.jsonl   # the "personas" file
iteration_stages:
  - name: lm/user/guided
  - name: lm/assistant/naive      # the assistant's reply
"""
YAML_TYPOS = [
    ("missing colon", 2, "max_turns 4\n", "a line with no ':'"),
    ("unclosed quote", 2, 'max_turns: "4\n', "the quote opened on this line closes only on line 11"),
    ("unclosed quote, apostrophe later", 7, "  temperature: '0.7\n", "the quote opened on this line closes only on line 14"),
    ("unclosed bracket", 3, "min_turns: [2\n", "a [ is not closed"),
    ("tab", 6, "\tmodel: granite4:3b\n", "replace the tab with spaces"),
    ("indent too deep", 6, "   model: granite4:3b\n", "indent this line like the keys beside it"),
    ("indent too shallow", 6, " model: granite4:3b\n", "indent this line like the keys beside it"),
]


@pytest.mark.parametrize("line,text,says", [case[1:] for case in YAML_TYPOS], ids=[case[0] for case in YAML_TYPOS])
def test_a_yaml_typo_is_reported_on_its_own_line(task_dir, line, text, says):
    lines = TYPO_BASE.splitlines(keepends=True)
    lines[line - 1] = text
    (task_dir / "task.yaml").write_text("".join(lines))
    result = run_cli("-n", 1, cwd=task_dir)
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"Error: task.yaml line {line}: not valid YAML ("), result.stderr
    assert says in result.stderr


@pytest.mark.parametrize("end", ["stage_modules: [\n", "prompts: {\n", "stage_modules: [x.py,\n"])
def test_a_bracket_left_open_at_the_end_of_the_file_is_named_on_its_line(task_dir, end):
    (task_dir / "task.yaml").write_text(TYPO_BASE + end)
    result = run_cli("-n", 1, cwd=task_dir)
    opening, closing = ("[", "]") if "[" in end else ("{", "}")
    line = len(TYPO_BASE.splitlines()) + 1
    assert result.stderr == f"Error: task.yaml line {line}: not valid YAML (a {opening} is not closed): close it with {closing}\n"


def test_the_typo_free_task_file_loads(task_dir):
    (task_dir / "task.yaml").write_text(TYPO_BASE)  # so each typo above is the only problem
    assert load_task(task_dir / "task.yaml")["max_turns"] == 4


def test_an_unclosed_quote_at_the_end_names_its_line(task_dir):
    (task_dir / "task.yaml").write_text("task_name: x\nmax_turns: 4\ntask_description: \"hello\n")
    result = run_cli("-n", 1, cwd=task_dir)
    assert result.returncode == 1
    assert result.stderr.strip() == ("Error: task.yaml line 3: not valid YAML (a quote is not closed): "
                                     "close the quote opened on this line")


def test_several_tasks_each_write_their_own_folder(task_dir, server):
    raw = yaml.safe_load((task_dir / "task.yaml").read_text())
    raw["task_name"] = "second/task"
    (task_dir / "second.yaml").write_text(yaml.safe_dump(raw))
    result = run_cli("--task-paths", "task.yaml", "second.yaml", "-n", 2, "--base-url", server.url,
                     "--output-dir", "runs", cwd=task_dir)
    assert result.returncode == 0, result.stderr
    assert len(read_jsonl(task_dir / "runs/public/examples/chit_chat/final_data.jsonl")) == 2
    assert len(read_jsonl(task_dir / "runs/second/task/formatted_output.jsonl")) == 2


def test_quiet_prints_no_progress(task_dir, server):
    result = run_cli("-n", 2, "--quiet", "--base-url", server.url, cwd=task_dir)
    assert result.returncode == 0 and result.stderr == ""


def test_eta_is_unknown_before_the_first_acceptance_and_never_climbs_between_two():
    assert eta(5, 0, 0.0, 50.0) is None
    # 1 of 5 accepted at 40 s: 4 more at that pace is 160 s; then the wait for the next one.
    waiting = [eta(5, 1, 40.0, since) for since in (0, 0.5, 10, 60, 159, 200, 400)]
    assert waiting[0] == 160
    assert all(later <= earlier for earlier, later in zip(waiting, waiting[1:]))
    assert waiting[-1] == 0
    assert eta(5, 2, 100.0, 0) == 150  # recomputed when the next one is accepted: the pace it shows
    assert eta(5, 5, 300.0, 0) == 0


def test_the_summary_and_run_log_count_every_lm_call(task_dir):
    with FakeServer(latency=0.005) as fake:
        result = run_cli("-n", 4, "--concurrency", 3, "--base-url", fake.url, cwd=task_dir)
        requests = len(fake.chat_requests())
    assert result.returncode == 0, result.stderr
    assert f", {requests} LM calls (" in result.stdout
    assert read_jsonl(task_dir / OUT / "runs.jsonl")[-1]["calls"] == requests


def test_several_base_urls_share_the_load(task_dir):
    with FakeServer() as one, FakeServer() as two:
        result = run_cli("-n", 6, "--base-url", f"{one.url},{two.url}", cwd=task_dir)
        assert result.returncode == 0, result.stderr
        calls = len(one.chat_requests()), len(two.chat_requests())
    assert min(calls) > 0
    assert len(outputs(task_dir)[0]) == 6


def test_exact_n_with_far_more_in_flight_than_n(task_dir):
    with FakeServer(latency=0.01, slots=8) as fake:
        result = run_cli("-n", 7, "--concurrency", 64, "--base-url", fake.url, cwd=task_dir)
        scenario_calls = sum(1 for body in fake.chat_requests() if "short scenarios" in body["messages"][0]["content"])
    assert result.returncode == 0, result.stderr
    final, formatted = outputs(task_dir)
    assert len(final) == len(formatted) == 7
    assert scenario_calls == 7  # no conversation was started that could not be kept
    assert "tokens" in result.stdout and "per accepted" in result.stdout


def test_shards_split_n_and_concatenate_to_n(task_dir, server):
    for index in (1, 2, 3):
        result = run_cli("-n", 10, "--shard", f"{index}/3", "--seed", 5, "--base-url", server.url, cwd=task_dir)
        assert result.returncode == 0, result.stderr
    base = task_dir / "output/public/examples/chit_chat"
    sizes = [len(read_jsonl(base / f"shard-{i}-of-3/final_data.jsonl")) for i in (1, 2, 3)]
    assert sizes == [4, 3, 3]
    ids = [r["conversation_id"] for i in (1, 2, 3) for r in read_jsonl(base / f"shard-{i}-of-3/formatted_output.jsonl")]
    assert len(set(ids)) == 10
    personas = [[last_step(r, "persona")["persona_role"] for r in read_jsonl(base / f"shard-{i}-of-3/final_data.jsonl")] for i in (1, 2)]
    assert personas[0][:3] != personas[1][:3]  # shards draw with their own seeds


def test_bad_shard_is_a_usage_error(task_dir):
    for shard in ("4/3", "0/2", "x"):
        result = run_cli("--shard", shard, cwd=task_dir)
        assert result.returncode == 2 and "--shard" in result.stderr


def test_a_corrupt_line_is_never_lost_even_when_the_server_is_down(task_dir, server):
    assert run_cli("-n", 5, "--base-url", server.url, cwd=task_dir).returncode == 0
    out = task_dir / OUT
    lines = (out / "final_data.jsonl").read_text().splitlines(keepends=True)
    corrupt = lines[2].replace("{", "{{", 1)  # a hand edit broke line 3
    (out / "final_data.jsonl").write_text("".join(lines[:2] + [corrupt] + lines[3:]))
    before = {name: (out / name).read_bytes() for name in ("final_data.jsonl", "formatted_output.jsonl")}

    result = run_cli("--engine", "ollama", "-n", 5, "--base-url", free_port_url(), cwd=task_dir)
    assert result.returncode == 1 and "cannot reach Ollama" in result.stderr
    assert {name: (out / name).read_bytes() for name in before} == before  # start-up failed: nothing touched
    assert not (out / "rejected.jsonl").exists()

    result = run_cli("-n", 5, "--base-url", server.url, cwd=task_dir)
    assert result.returncode == 0
    assert "note: final_data.jsonl: moved 1 bad line to rejected.jsonl (line 3: not valid JSON" in result.stderr
    assert "note: formatted_output.jsonl: moved 1 bad line to rejected.jsonl (line 3: its record is not in" in result.stderr
    rejected = read_jsonl(out / "rejected.jsonl")
    assert [(r["file"], r["line"]) for r in rejected] == [("final_data.jsonl", 3), ("formatted_output.jsonl", 3)]
    assert rejected[0]["text"] == corrupt and "not valid JSON" in rejected[0]["reason"]
    assert json.loads(rejected[1]["text"])["conversation_id"] == json.loads(lines[2])["conversation_id"]
    final, formatted = outputs(task_dir)
    assert len(final) == 5 and [r["conversation_id"] for r in final] == [r["conversation_id"] for r in formatted]
    assert [r["conversation_id"] for r in final[:4]] == [json.loads(line)["conversation_id"] for line in lines[:2] + lines[3:]]


@pytest.mark.parametrize("dialect, cached", [("openai", "openai"), ("openai", "llama-server"), ("ollama", None)])
def test_the_run_log_summary_and_card_carry_prompt_completion_and_cached_tokens(task_dir, dialect, cached):
    with FakeServer(prefix_cache=True, cached=cached or "openai") as fake:
        result = run_cli("-n", 3, "--engine", dialect, "--model", "granite4:3b", "--base-url", fake.url, "--quiet", cwd=task_dir)
        calls = fake.cache_log
    assert result.returncode == 0, result.stderr
    folder = task_dir / "output/public/examples/chit_chat"
    [run] = read_jsonl(folder / "runs.jsonl")
    served = sum(call["cached"] // 4 for call in calls)
    if dialect == "openai":  # the server reports every prompt token and the cached ones
        assert run["prompt_tokens"] == sum(call["chars"] // 4 for call in calls)
        assert run["cached_tokens"] == served > run["prompt_tokens"] / 2
    else:  # Ollama's prompt_eval_count leaves cache hits out and reports none
        assert run["prompt_tokens"] == sum((call["chars"] - call["cached"]) // 4 for call in calls)
        assert run["cached_tokens"] == 0
    assert run["completion_tokens"] > 0 and run["tokens"] == run["prompt_tokens"] + run["completion_tokens"]
    assert run["cost_usd"] is None and "cost:" not in result.stdout  # no prices: tokens only
    assert f"{run['prompt_tokens']} prompt, {run['cached_tokens']} of them cached" in result.stdout
    assert f"{run['tokens']:,} ({run['prompt_tokens']:,} prompt, {run['cached_tokens']:,} cached; " in \
        (folder / "README.md").read_text()


def test_prices_turn_tokens_into_a_cost_line(task_dir):
    with FakeServer(prefix_cache=True) as fake:
        result = run_cli("-n", 2, "--engine", "openai", "--model", "granite4:3b", "--base-url", fake.url, "--quiet",
                         "--price-in", "0.4", "--price-cached", "0.1", "--price-out", "1.6", cwd=task_dir)
    assert result.returncode == 0, result.stderr
    folder = task_dir / "output/public/examples/chit_chat"
    [run] = read_jsonl(folder / "runs.jsonl")
    expected = ((run["prompt_tokens"] - run["cached_tokens"]) * 0.4 + run["cached_tokens"] * 0.1
                + run["completion_tokens"] * 1.6) / 1e6
    assert run["cost_usd"] == pytest.approx(expected, abs=1e-6) and run["cost_usd"] > 0
    assert f"  cost: {run['cost_usd']:.4f} USD (" in result.stdout
    assert "at USD per million tokens: 0.4 in, 0.1 cached, 1.6 out" in result.stdout
    assert f"| {run['cost_usd']:.4f} |" in (folder / "README.md").read_text()


def test_a_negative_price_is_one_error_line(task_dir):
    result = run_cli("-n", 1, "--price-in", "-1", cwd=task_dir)
    assert result.returncode == 2
    assert result.stderr == "Error: argument --price-in: expected a number >= 0, got -1.0: see 'python -m chitchat_gen --help'\n"


# A value of each kind a config row's flag takes: as typed, and as the loaded task holds it.
FLAG_SAMPLES = {"int": ("3", 3), "number": ("0.5", 0.5), "str": ("granite4:3b", "granite4:3b"),
                "urls": ("http://a:1", ["http://a:1"]), "ollama|openai|local": ("local", "local")}
FLAGGED = {key: spec for key, spec in {**TASK_OVERRIDES, **ENGINE_OVERRIDES}.items() if spec["flag"]}


@pytest.mark.parametrize("key", FLAGGED)
def test_every_flagged_row_is_a_flag_that_reaches_the_task(task_dir, key):
    spec = FLAGGED[key]
    typed, loaded = FLAG_SAMPLES[spec["kind"]]
    parsed = vars(build_parser().parse_args([spec["flag"], typed]))
    task = load_task(task_dir / "task.yaml", **{key: parsed[key]})
    section = task["engine"] if key in ENGINE_OVERRIDES else task
    assert section["base_urls" if spec["kind"] == "urls" else spec["name"]] == loaded


MY_STAGES = '''from chitchat_gen import stage


@stage("filter/min_user_words")
def min_user_words(record, ctx):
    record["checked_by"] = "filter/min_user_words"
    return record
'''


def add_my_stage(task_dir, modules):
    text = (task_dir / "task.yaml").read_text().replace("  - name: lm/assistant/naive",
                                                        "  - name: filter/min_user_words\n  - name: lm/assistant/naive")
    (task_dir / "task.yaml").write_text(f"stage_modules: {modules}\n" + text)


def test_a_tasks_own_stage_runs_from_the_cli_when_the_task_names_its_file(task_dir, server):
    (task_dir / "stages").mkdir()
    (task_dir / "stages" / "my_stages.py").write_text(MY_STAGES)
    add_my_stage(task_dir, "[stages/my_stages.py]")
    # Run from another folder: the file is found relative to the task file, not to the working directory.
    (task_dir / "elsewhere").mkdir()
    result = run_cli("--task-paths", task_dir / "task.yaml", "-n", 2, "--base-url", server.url, "--quiet",
                     cwd=task_dir / "elsewhere")
    assert result.returncode == 0, result.stderr
    final, _ = outputs(task_dir / "elsewhere")
    assert [r["checked_by"] for r in final] == ["filter/min_user_words"] * 2


@pytest.mark.parametrize("modules, body, message", [
    ("[]", None, "unknown stage 'filter/min_user_words'"),
    ("[nowhere.py]", None, "stage_modules[0]: file "),
    ("[no_such_module_xyz]", None, "no module no_such_module_xyz on the Python path"),
    ("[my_stages.py]", "x = 1\nundefined_name\n", "importing my_stages.py failed at my_stages.py line 2 (NameError"),
])
def test_a_stage_file_that_is_missing_or_broken_is_one_error_line(task_dir, modules, body, message):
    if body:
        (task_dir / "my_stages.py").write_text(body)
    add_my_stage(task_dir, modules)
    result = run_cli("-n", 1, cwd=task_dir)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert message in lines[0]
    if modules == "[]":
        assert "list the Python file that registers it (@stage) under stage_modules" in lines[0]
