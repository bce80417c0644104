"""Every ```python block of the README and docs/ runs, in order, in a folder holding the shipped
task: documentation that cannot rot. Also: a task file naming a custom stage, end to end."""

import ast
import json
import random
import re
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT
from fake_lm import fake_chat

from chitchat_gen import STAGES, generate, load_task, stage
from chitchat_gen.cli import build_parser
from chitchat_gen.pipeline import new_memory, run_conversation
from chitchat_gen.reference import key_reference

DOCS = ["README.md", "docs/pipeline.md"]  # the docs whose python blocks run (the others show shell and YAML)


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
    assert [next(s for s in r["steps"] if s["role"] == "persona")["mood"] for r in records] and set(seen) <= {"cheerful", "grumpy"}


def test_a_custom_filter_stage_drops_with_its_reason(task_dir, registry_restored):
    @stage("test/no_questions")
    def no_questions(record, ctx):
        return "user asked a question" if record["steps"][-1]["content"].endswith("?") else record

    raw = yaml.safe_load((task_dir / "task.yaml").read_text())
    raw["iteration_stages"].insert(2, {"name": "test/no_questions"})
    (task_dir / "task.yaml").write_text(yaml.safe_dump(raw))
    task = load_task(task_dir / "task.yaml")
    ctx = {"task": task, "chat": fake_chat, "rng": random.Random(0), "memory": new_memory()}
    assert run_conversation(task, ctx) == (None, "test/no_questions: user asked a question")  # fake users ask


# Every module's docstring examples, found by a glob: a new module's examples run without a list to update.
MODULES = sorted(path.stem for path in (ROOT / "chitchat_gen").glob("*.py") if path.stem != "__main__")
# An example deleted by mistake fails here (and a module renamed must be renamed here too).
WITH_EXAMPLES = {"card", "chat", "dedupe", "errors", "export", "gates", "lifecycle", "pipeline", "prompts", "ratelimit",
                 "record", "redact", "stages", "stats", "store", "task", "text", "urls", "view"}


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module, monkeypatch):
    monkeypatch.chdir(ROOT)  # examples load the shipped task.yaml, as a user in the repository's folder would
    import doctest
    import importlib
    result = doctest.testmod(importlib.import_module("chitchat_gen" if module == "__init__" else f"chitchat_gen.{module}"))
    assert result.failed == 0
    assert result.attempted > 0 or module not in WITH_EXAMPLES
    assert WITH_EXAMPLES <= set(MODULES)


def package_imports() -> dict[str, set]:
    """{module: the package's modules it imports}, read from the source."""
    imports = {}
    for path in (ROOT / "chitchat_gen").glob("*.py"):
        tree = ast.parse(path.read_text())
        imports[path.stem] = {node.module for node in ast.walk(tree)
                              if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}
        imports[path.stem] |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                               and node.level == 1 and not node.module for alias in node.names}
    return imports


def test_no_module_imports_one_that_imports_it_back():
    imports = package_imports()

    def reaches(start, goal, seen=()):
        return any(m == goal or (m not in seen and reaches(m, goal, seen + (m,))) for m in imports.get(start, ()))

    assert [m for m in imports if reaches(m, m)] == []


# The core of the design card: the record, the stages in their registry, the loop, the LM over
# HTTP and the task file. Every other module is a capability that imports it (docs/layout.md).
CORE = {"__init__", "errors", "record", "prompts", "urls", "task", "yaml_errors", "chat", "stages", "pipeline"}
CORE_LINES = 2000  # what `import chitchat_gen.pipeline` + `from chitchat_gen import load_task` may load


def test_no_core_module_imports_a_capability():
    imports = package_imports()
    assert imports["errors"] == set()  # any module may raise them
    assert {m: sorted(imports[m] - CORE) for m in CORE if imports[m] - CORE} == {}


def test_the_core_loads_alone_and_runs_with_a_stand_in_chat(tmp_path):
    # In a fresh interpreter: what the core loads, and a conversation made with it alone.
    script = """
import json, pathlib, sys
import chitchat_gen.pipeline as pipeline
from chitchat_gen import load_task
task = load_task("task.yaml")
def chat(messages, json_schema=None, **options):
    return "A retired sailor wants to talk about knots." if "scenario" in messages[-1]["content"] else "Thanks, bye!"
records = list(pipeline.generate(task, 2, chat=chat, seed=1))
loaded = sorted(m.removeprefix("chitchat_gen.") for m in sys.modules if m.startswith("chitchat_gen."))
lines = sum(len(pathlib.Path(sys.modules[m].__file__).read_text().splitlines()) for m in sys.modules
            if m == "chitchat_gen" or m.startswith("chitchat_gen."))
print(json.dumps({"loaded": loaded, "lines": lines, "records": len(records),
                  "heavy": [m for m in ("argparse", "http.server", "ray") if m in sys.modules]}))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert set(found["loaded"]) <= CORE and found["heavy"] == [] and found["records"] == 2
    assert "yaml_errors" not in found["loaded"]  # read only for a task file PyYAML refuses
    assert found["lines"] <= CORE_LINES, f"the core grew to {found['lines']} lines: keep it to the design card"


def test_a_stage_beyond_the_core_is_imported_when_a_task_names_it(tmp_path):
    (tmp_path / "task.yaml").write_text((ROOT / "task.yaml").read_text().replace("data_path: ", f"data_path: {ROOT}/")
                                        + "finalization_stages:\n  - name: lm/judge\n    min_score: 3\n")
    script = f"""
import sys
from chitchat_gen import load_task
task = load_task({str(tmp_path / "task.yaml")!r})
print(task["finalization_stages"][0]["min_score"], "chitchat_gen.extra_stages" in sys.modules, "chitchat_gen.plug" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3.0", "True", "False"]

    (tmp_path / "task.yaml").write_text((tmp_path / "task.yaml").read_text().replace("lm/judge", "lm/judg"))
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "unknown stage 'lm/judg' (did you mean 'lm/judge'?)" in done.stderr  # named before its module loads


def test_a_tasks_own_lm_judge_is_the_one_that_runs(tmp_path):
    (tmp_path / "mine.py").write_text("from chitchat_gen import stage\n\n@stage('lm/judge')\n"
                                      "def my_judge(record, ctx):\n    return record\n")
    (tmp_path / "task.yaml").write_text("stage_modules: [mine.py]\n" + (ROOT / "task.yaml").read_text().replace(
        "data_path: ", f"data_path: {ROOT}/") + "finalization_stages:\n  - name: lm/judge\n")
    script = f"""
from chitchat_gen import STAGES, load_task
load_task({str(tmp_path / "task.yaml")!r})
print(STAGES["lm/judge"].__name__)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["my_judge"], done.stderr


def test_the_key_reference_is_made_from_the_field_tables():
    reference = (ROOT / "docs/task-file.md").read_text()
    block = re.search(r"<!-- keys: begin -->\n(.*?)<!-- keys: end -->", reference, re.S)
    assert block, "docs/task-file.md lacks the <!-- keys: begin --> ... <!-- keys: end --> block"
    assert block.group(1) == key_reference(), (
        "docs/task-file.md's key reference is out of date: paste the output of "
        "python -c 'from chitchat_gen.reference import key_reference; print(key_reference(), end=\"\")'")


def section(doc: str, title: str) -> str:
    """The text of `doc`'s `## title` section, up to the next `## ` heading or the end."""
    return re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", (ROOT / doc).read_text(), re.S | re.M).group(1)


def test_the_readme_command_line_table_lists_every_flag_and_no_other():
    rows = re.findall(r"^\| (`-.*?) \|", section("docs/cli.md", "Command line"), re.M)
    listed = {flag for row in rows for flag in re.findall(r"`(--?[a-z][\w-]*)", row)}
    flags = {option for action in build_parser()._actions for option in action.option_strings} - {"-h", "--help"}
    assert listed == flags, "docs/cli.md's Command line table: add the flags of --help it lacks, drop those it has not"


def test_the_readme_layout_names_every_module_with_its_job():
    listed = re.findall(r"^  (\w+\.py) +\S", section("README.md", "Layout"), re.M)
    modules = sorted(path.name for path in (ROOT / "chitchat_gen").glob("*.py"))
    assert sorted(listed) == modules, "README.md's Layout: one line per chitchat_gen/*.py module, '  name.py   its job'"


MAX_FUNCTION_LINES = 60  # a function a reader takes in at once; its nested functions count as part of it


def outer_functions(tree: ast.AST):
    """The module's functions and methods (of classes at any depth), not those nested in a function."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
        elif not isinstance(node, ast.Lambda):
            yield from outer_functions(node)


def test_no_function_is_longer_than_60_lines():
    too_long = []
    for path in sorted((ROOT / "chitchat_gen").glob("*.py")):
        for function in outer_functions(ast.parse(path.read_text(), str(path))):
            lines = function.end_lineno - function.lineno + 1  # from the def line: decorators left out
            if lines > MAX_FUNCTION_LINES:
                too_long.append(f"{path.name}:{function.lineno} {function.name} ({lines} lines)")
    assert too_long == [], f"split these functions into steps of at most {MAX_FUNCTION_LINES} lines: {too_long}"
