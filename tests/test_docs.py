"""Every ```python block of the README and docs/ runs, in order, in a folder holding the shipped
task: documentation that cannot rot. Also: a task file naming a custom stage, end to end."""

import random
import re

import pytest
import yaml

from chitchat_gen import STAGES, generate, load_task, stage
from chitchat_gen.pipeline import run_conversation
from conftest import ROOT
from fake_lm import fake_chat

DOCS = ["README.md", "docs/pipeline.md"]


@pytest.fixture
def registry_restored():
    before = dict(STAGES)
    yield
    STAGES.clear()
    STAGES.update(before)


@pytest.mark.parametrize("doc", DOCS)
def test_python_snippets_run(doc, task_dir, monkeypatch, registry_restored):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / doc).read_text(), re.S)
    assert blocks, f"{doc} has no python snippet"
    monkeypatch.chdir(task_dir)
    namespace = {}
    for block in blocks:
        exec(compile(block, doc, "exec"), namespace)


def test_a_task_naming_a_custom_stage_runs_it(task_dir, registry_restored):
    seen = []

    @stage("test/mood")
    def mood(record, ctx):
        persona = next(s for s in record["steps"] if s["role"] == "persona")
        persona["mood"] = ctx["rng"].choice(ctx["stage"]["moods"])
        seen.append(persona["mood"])
        return record

    raw = yaml.safe_load((task_dir / "task.yaml").read_text())
    raw["initialization_stages"].append({"name": "test/mood", "moods": ["cheerful", "grumpy"]})
    (task_dir / "task.yaml").write_text(yaml.safe_dump(raw))
    records = list(generate(load_task(task_dir / "task.yaml"), 4, chat=fake_chat, seed=2))
    assert len(seen) == 4
    assert [r["steps"][1]["mood"] for r in records] and set(seen) <= {"cheerful", "grumpy"}


def test_a_custom_filter_stage_drops_with_its_reason(task_dir, registry_restored):
    @stage("test/no_questions")
    def no_questions(record, ctx):
        return "user asked a question" if record["steps"][-1]["content"].endswith("?") else record

    raw = yaml.safe_load((task_dir / "task.yaml").read_text())
    raw["iteration_stages"].insert(2, {"name": "test/no_questions"})
    (task_dir / "task.yaml").write_text(yaml.safe_dump(raw))
    task = load_task(task_dir / "task.yaml")
    ctx = {"task": task, "chat": fake_chat, "rng": random.Random(0), "memory": {"scenarios": []}}
    assert run_conversation(task, ctx) == (None, "test/no_questions: user asked a question")  # fake users ask
