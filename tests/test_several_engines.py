"""Several engines in one task (`engines:`, a stage's `engine:` or DiGiT's `generator:`/`blocks:`):
each fake server gets only its stages' calls, through the real CLI, with resume, --engine-set,
the start-up check of every engine, and the figures per engine in runs.jsonl and the card."""

import json

import pytest
from conftest import outputs, read_jsonl, run_cli
from fake_lm import FakeServer
from test_engines import free_port_url
from test_task import write_task

from chitchat_gen import load_task
from chitchat_gen.errors import ConfigError

OUT = "output/public/examples/chit_chat"


def is_assistant_call(body: dict) -> bool:
    return "helpful, friendly" in body["messages"][0]["content"]  # prompts.ASSISTANT_SYSTEM


def stage(raw, name):
    return next(s for s in raw["initialization_stages"] + raw["iteration_stages"] if s["name"] == name)


def two_engines(url, strong_url, form="engine", **strong):
    """The shipped task with its assistant on a second engine, `strong` (an OpenAI-style server)."""
    def change(raw):
        raw["engine"] = {"type": "ollama", "base_url": url}
        raw["engines"] = {"strong": {"type": "openai", "base_url": strong_url, "model": "big-model", **strong}}
        choice = {"engine": {"engine": "strong"}, "generator": {"generator": "strong"},
                  "blocks": {"blocks": {"generator": "strong"}}}[form]
        stage(raw, "lm/assistant/naive").update(choice)
    return change


@pytest.mark.parametrize("form", ["engine", "generator", "blocks"])
def test_each_server_gets_only_its_stages_calls(task_dir, form):
    with FakeServer() as cheap, FakeServer(models=["big-model"]) as strong:
        write_task(task_dir, two_engines(cheap.url, strong.url, form))
        done = run_cli("-n", 3, "--quiet", cwd=task_dir)
        assert done.returncode == 0, done.stderr
        assert strong.chat_requests() and all(is_assistant_call(body) for body in strong.chat_requests())
        assert cheap.chat_requests() and not any(is_assistant_call(body) for body in cheap.chat_requests())
        assert all(body["model"] == "big-model" for body in strong.chat_requests())
        calls = {"default": len(cheap.chat_requests()), "strong": len(strong.chat_requests())}
    [entry] = read_jsonl(task_dir / OUT / "runs.jsonl")
    assert {name: used["calls"] for name, used in entry["engines"].items()} == calls  # no failures: calls = requests
    assert entry["calls"] == sum(calls.values())
    assert entry["engines"]["strong"]["stages"] == ["lm/assistant/naive"]
    assert entry["engines"]["strong"]["model"] == "big-model"
    assert "lm/assistant/naive" not in entry["engines"]["default"]["stages"]
    card = (task_dir / OUT / "README.md").read_text(encoding="utf-8")
    assert "big-model" in card and "granite4:3b" in card
    assert "engine strong (openai big-model; lm/assistant/naive)" in done.stdout


def test_digits_default_block_is_the_default_engine(task_dir):
    with FakeServer() as cheap:
        write_task(task_dir, lambda raw: (raw["engine"].update(base_url=cheap.url),
                                          stage(raw, "lm/assistant/naive").update(generator="generator")))
        assert [s["engine"] for s in load_task(task_dir / "task.yaml")["iteration_stages"]] == ["default"] * 3


@pytest.mark.parametrize("change, message", [
    (lambda raw: stage(raw, "lm/assistant/naive").update(engine="strnog"),
     "iteration_stages[2].engine: unknown engine 'strnog' (did you mean 'strong'?); known engines: default, strong"),
    (lambda raw: stage(raw, "lm/assistant/naive").update(generator="judge"),
     "iteration_stages[2].generator: unknown engine 'judge'"),
    (lambda raw: stage(raw, "lm/assistant/naive").update(engine="strong", generator="default"),
     "iteration_stages[2]: engine and generator name different engines: keep one"),
    (lambda raw: raw["engines"].update(default={"type": "ollama"}), "engines.default: expected a name"),
    (lambda raw: raw["engines"]["strong"].update(temprature=1), "engines.strong: unknown key 'temprature'"),
])
def test_a_bad_engine_name_is_one_error_line_before_anything_is_written(task_dir, change, message):
    def both(raw):
        two_engines("http://127.0.0.1:1", "http://127.0.0.1:2")(raw)
        change(raw)
    write_task(task_dir, both)
    with pytest.raises(ConfigError, match="^" + str(task_dir / "task.yaml")) as error:
        load_task(task_dir / "task.yaml")
    assert message in str(error.value)
    done = run_cli("-n", 1, cwd=task_dir)
    assert done.returncode == 1 and done.stderr.startswith("Error: ") and done.stderr.count("\n") == 1
    assert not (task_dir / "output").exists()


def test_every_engine_is_checked_before_the_folder_is_touched(task_dir):
    with FakeServer() as cheap:
        write_task(task_dir, two_engines(cheap.url, free_port_url()))
        done = run_cli("-n", 1, cwd=task_dir)
        assert done.returncode == 1 and "cannot reach an OpenAI-compatible server" in done.stderr
        assert not (task_dir / "output").exists() and cheap.chat_requests() == []


def test_engine_set_points_a_named_engine_elsewhere_and_a_resume_keeps_both(task_dir):
    with FakeServer() as cheap, FakeServer(models=["big-model"]) as strong, FakeServer(models=["other"]) as elsewhere:
        write_task(task_dir, two_engines(cheap.url, strong.url))
        assert run_cli("-n", 2, "--quiet", cwd=task_dir).returncode == 0
        done = run_cli("-n", 4, "--quiet", "--engine-set", f"strong.base_url={elsewhere.url}",
                       "--engine-set", "strong.model=other", cwd=task_dir)
        assert done.returncode == 0, done.stderr
        assert "made with openai big-model (engine strong), this run's with openai other" in done.stderr
        assert elsewhere.chat_requests() and all(is_assistant_call(b) for b in elsewhere.chat_requests())
    final, formatted = outputs(task_dir)
    assert len(final) == len(formatted) == 4
    runs = read_jsonl(task_dir / OUT / "runs.jsonl")
    assert [r["engines"]["strong"]["model"] for r in runs] == ["big-model", "other"]


@pytest.mark.parametrize("flag, message", [
    ("strong", "expected NAME.KEY=VALUE"),
    ("strong.api_key=k", "api_key: not an engine key a flag may set"),
    ("strong.temperature=hot", "expected a number >= 0"),
    ("nope.model=x", "engine-set: no engine 'nope'"),
])
def test_engine_set_mistakes_are_one_error_line(task_dir, flag, message):
    write_task(task_dir, two_engines("http://127.0.0.1:1", "http://127.0.0.1:2"))
    done = run_cli("-n", 1, "--engine-set", flag, cwd=task_dir)
    assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr


def test_the_python_api_takes_one_chat_per_engine(task_dir):
    from fake_lm import fake_chat

    from chitchat_gen import generate
    write_task(task_dir, two_engines("http://127.0.0.1:1", "http://127.0.0.1:2"))
    task = load_task(task_dir / "task.yaml", seed=1)
    seen = []

    def strong(messages, json_schema=None, **options):
        seen.append(is_assistant_call({"messages": messages}))
        return fake_chat(messages, json_schema=json_schema, **options)

    stats = {}
    records = list(generate(task, 2, chat={"default": fake_chat, "strong": strong}, stats=stats))
    assert len(records) == 2 and seen and all(seen)
    assert stats["engines"]["strong"]["calls"] == len(seen)
    assert stats["engines"]["default"]["calls"] + len(seen) == stats["calls"]
    with pytest.raises(ConfigError, match="no function for the task's engine"):
        generate(task, 1, chat={"default": fake_chat})
    json.dumps(stats["engines"])  # plain figures, as runs.jsonl keeps them


def test_trace_says_which_engine_answered_each_call(task_dir):
    with FakeServer() as cheap, FakeServer(models=["big-model"]) as strong:
        write_task(task_dir, two_engines(cheap.url, strong.url))
        done = run_cli("trace", cwd=task_dir)
        assert done.returncode == 0, done.stderr
    headers = [line for line in done.stdout.splitlines() if ": LM call" in line]
    assert any(line.startswith("-- lm/assistant/naive: LM call (engine strong)") for line in headers)
    assert not any("(engine" in line for line in headers if "lm/assistant/naive" not in line)


def test_switching_a_named_engines_type_starts_from_that_types_defaults(task_dir):
    write_task(task_dir, two_engines("http://127.0.0.1:1", "http://127.0.0.1:2", max_tokens=99))
    strong = load_task(task_dir / "task.yaml", engines={"strong": {"type": "ollama"}})["engines"]["strong"]
    assert (strong["model"], strong["base_urls"], strong["max_tokens"]) == ("granite4:3b", ["http://localhost:11434"], 512)
    kept = load_task(task_dir / "task.yaml", engines={"strong": {"retries": 1}})["engines"]["strong"]
    assert (kept["model"], kept["base_urls"], kept["max_tokens"], kept["retries"]) == \
        ("big-model", ["http://127.0.0.1:2"], 99, 1)
