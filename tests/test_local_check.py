"""The local engine's start-up check: the model loads and answers one token in a child process
before anything is written, so a llama.cpp built for instructions this CPU does not run is one
error line, not a dead process and a half-made folder.

The stand-ins are `llama_cpp` packages put first on PYTHONPATH: the CLI's child imports one of
them exactly as it imports the real library, and it dies by SIGILL, hangs, or fails to load.
"""

import hashlib
import os

import pytest
import yaml

from conftest import ROOT, run_cli
from fake_lm import FakeServer

OUT = "output/public/examples/chit_chat"
STAND_INS = {
    "sigill": "import os, signal\n"
              "class Llama:\n"
              "    def __init__(self, **settings): pass\n"
              "    def create_chat_completion(self, **call): os.kill(os.getpid(), signal.SIGILL)\n",
    "hang": "import time\n"
            "class Llama:\n"
            "    def __init__(self, **settings): pass\n"
            "    def create_chat_completion(self, **call): time.sleep(3600)\n",
    "bad_file": "class Llama:\n"
                "    def __init__(self, model_path, **settings):\n"
                "        raise ValueError(f'Failed to load model from file: {model_path}')\n",
}


def folder_digest(folder):
    """Every file under `folder` with the hash of its bytes: equal digests, untouched folder."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def written(task_dir):
    """The task folder after a first run of 3 against the fake server, and the digest of its output."""
    with FakeServer() as server:
        first = run_cli("-n", 3, "--restart", "--quiet", "--base-url", server.url, cwd=task_dir)
    assert first.returncode == 0, first.stderr
    return task_dir, folder_digest(task_dir / OUT)


def run_local_with(stand_in, task_dir, *args):
    """The CLI on --engine local with the `stand_in` llama_cpp first on the path; any file as the model."""
    library = task_dir / "stand_in" / stand_in
    (library / "llama_cpp").mkdir(parents=True)
    (library / "llama_cpp" / "__init__.py").write_text(STAND_INS[stand_in])
    (task_dir / "model.gguf").write_bytes(b"GGUF")
    return run_cli("--engine", "local", "--model", "model.gguf", "-n", 5, *args, cwd=task_dir,
                   env={"PYTHONPATH": f"{library}{os.pathsep}{ROOT}"})


def assert_one_error_line(result, start, task_dir, before):
    """Exit 1, one line starting `start` on stderr, and the output folder's bytes as they were."""
    assert result.returncode == 1
    assert result.stderr.startswith(start), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert folder_digest(task_dir / OUT) == before


def test_a_model_library_that_dies_by_sigill_is_one_error_line_naming_the_rebuild(written):
    task_dir, before = written
    result = run_local_with("sigill", task_dir, "--restart")  # --restart too: nothing is cleared before the check
    assert_one_error_line(result, "Error: the embedded model crashed (illegal instruction) in a one-token test call",
                          task_dir, before)
    assert 'reinstall llama-cpp-python with CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" pip install ' \
           "--force-reinstall --no-cache-dir" in result.stderr
    assert not list(task_dir.glob("core*"))  # the child writes no core file


def test_a_model_library_that_hangs_is_killed_after_engine_timeout(written):
    task_dir, before = written
    raw = yaml.safe_load((task_dir / "task.yaml").read_text())
    raw["engine"]["timeout"] = 2
    (task_dir / "task.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    result = run_local_with("hang", task_dir)
    assert_one_error_line(result, "Error: the embedded model did not answer a one-token test call within 2 s "
                          "(engine.timeout in the task file)", task_dir, before)


def test_a_model_file_that_does_not_load_names_the_file(written):
    task_dir, before = written
    result = run_local_with("bad_file", task_dir)
    assert_one_error_line(result, "Error: the embedded model failed a one-token test call "
                          "(ValueError: Failed to load model from file: model.gguf): check the .gguf file",
                          task_dir, before)


def test_the_readme_installs_the_portable_build_the_error_names():
    from chitchat_gen.engines import PORTABLE_CMAKE_ARGS
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert f'CMAKE_ARGS="{PORTABLE_CMAKE_ARGS}" pip install --no-cache-dir -e ".[local,test]"' in quick_start
    assert f'set "CMAKE_ARGS={PORTABLE_CMAKE_ARGS}"' in quick_start  # cmd
    assert f'$env:CMAKE_ARGS="{PORTABLE_CMAKE_ARGS}"' in quick_start  # PowerShell
    assert f'CMAKE_ARGS="{PORTABLE_CMAKE_ARGS}"' in (ROOT / ".ci" / "run").read_text()
