"""Shared fixtures: a copy of the shipped task in a temp folder, a fake LM server, the CLI as a subprocess."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fake_lm import FakeServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def task_dir(tmp_path):
    """The repo's task.yaml, personas.jsonl and seed_examples.jsonl, copied to a temp folder."""
    for name in ("task.yaml", "personas.jsonl", "seed_examples.jsonl"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


@pytest.fixture
def server():
    with FakeServer() as fake:
        yield fake


def run_cli(*args, cwd, timeout=120, env=None):
    """Run `python -m chitchat_gen ARGS` in `cwd`; return the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "chitchat_gen", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def read_jsonl(path):
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def outputs(folder):
    """(final records, formatted records) of the shipped task's output folder."""
    out = Path(folder) / "output" / "public" / "examples" / "chit_chat"
    return read_jsonl(out / "final_data.jsonl"), read_jsonl(out / "formatted_output.jsonl")
