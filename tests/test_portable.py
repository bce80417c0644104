"""Windows and macOS, simulated on Linux: no POSIX-only module is needed, and the output files
are the same bytes (UTF-8, "\\n" line endings) whatever the platform's text-file defaults are.

The CLI runs as a subprocess whose prelude changes what Python sees before the package loads:
POSIX-only modules made unimportable (`sys.modules[name] = None`), or open() given Windows'
defaults (locale encoding cp1252, "\\r\\n" written for "\\n").
"""

import os
import pkgutil
import subprocess
import sys

from conftest import ROOT, read_jsonl

import chitchat_gen

OUT = "output/public/examples/chit_chat"
POSIX_ONLY = ["fcntl", "termios", "tty", "pty", "resource", "grp", "pwd", "syslog"]
WITHOUT_POSIX = f"import sys\nfor name in {POSIX_ONLY!r}:\n    sys.modules[name] = None\n"
# _pyio is the pure-Python io; its text files take os.linesep and the encoding at open time.
WINDOWS_OPEN = """
import _pyio, builtins, io, os
os.linesep = "\\r\\n"
def windows_open(file, mode="r", buffering=-1, encoding=None, *args, **kwargs):
    if "b" not in mode and encoding is None:
        encoding = "cp1252"
    return _pyio.open(file, mode, buffering, encoding, *args, **kwargs)
builtins.open = io.open = windows_open
"""


def run_cli_with(prelude, *args, cwd):
    """`python -m chitchat_gen ARGS`, with `prelude` run first in the same interpreter."""
    code = f"import sys\n{prelude}\nimport runpy\nrunpy.run_module('chitchat_gen', run_name='__main__', alter_sys=True)"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_every_module_imports_without_posix_only_modules():
    names = [f"chitchat_gen.{module.name}" for module in pkgutil.iter_modules(chitchat_gen.__path__)
             if module.name != "__main__"]  # that one runs the CLI
    assert "chitchat_gen.store" in names
    code = f"{WITHOUT_POSIX}import importlib\nfor name in {names!r}:\n    importlib.import_module(name)\n" \
           "from chitchat_gen.store import _take_lock\nprint(_take_lock.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "_pid_file_lock"


def test_a_full_run_without_fcntl_writes_n_and_its_lock_refuses_a_second_run(task_dir, server):
    folder = task_dir / OUT
    folder.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", f"{WITHOUT_POSIX}import time\nfrom pathlib import Path\n"
                               "from chitchat_gen.store import open_store\n"
                               f"store = open_store(Path({str(folder)!r}))\nprint('locked', flush=True)\ntime.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused = run_cli_with(WITHOUT_POSIX, "-n", 3, "--base-url", server.url, cwd=task_dir)
    finally:
        holder.kill()
        holder.wait()
    assert refused.returncode == 1
    assert refused.stderr.strip() == (f"Error: {OUT} is in use by another run (pid {holder.pid}): "
                                      "wait for it, or use another --output-dir")
    assert (folder / "final_data.jsonl").read_bytes() == b""  # refused before it wrote anything

    result = run_cli_with(WITHOUT_POSIX, "-n", 5, "--base-url", server.url, cwd=task_dir)
    assert result.returncode == 0, result.stderr
    assert len(read_jsonl(folder / "final_data.jsonl")) == len(read_jsonl(folder / "formatted_output.jsonl")) == 5
    assert not (folder / ".lock").exists()  # the pid-file lock is removed when the run ends


def test_output_files_are_utf8_with_newline_endings_under_windows_text_defaults(task_dir, server):
    task = task_dir / "task.yaml"
    task.write_text(task.read_text(encoding="utf-8").replace("task_name: public/examples/chit_chat",
                                                             "task_name: public/exemples/café"), encoding="utf-8")
    (task_dir / "personas.jsonl").write_text('{"role": "pâtissière", "expertise": "crème brûlée"}\n', encoding="utf-8")
    assert run_cli_with(WINDOWS_OPEN, "-n", 3, "--base-url", server.url, cwd=task_dir).returncode == 0
    bad = task_dir / "output" / "public" / "exemples" / "café" / "final_data.jsonl"
    with open(bad, "ab") as out:
        out.write('{"torn": "é'.encode())  # so the next run's repair writes rejected.jsonl and rewrites both files
    (bad.parent / ".checkpoint.json").unlink()  # the full check, which rewrites them, not the tail's cut
    result = run_cli_with(WINDOWS_OPEN, "-n", 4, "--base-url", server.url, cwd=task_dir)
    assert result.returncode == 0, result.stderr
    folder = bad.parent
    written = sorted(path.name for path in folder.iterdir())
    assert written == [".checkpoint.json", ".figures.json", ".ids", ".lock", "README.md", "final_data.jsonl",
                       "formatted_output.jsonl", "rejected.jsonl", "runs.jsonl"]
    for name in [".checkpoint.json", ".figures.json"] + written[4:]:  # .ids is binary: 8 bytes an id
        data = (folder / name).read_bytes()
        assert b"\r\n" not in data, name
        data.decode("utf-8")  # strict: a cp1252 byte would fail here
    assert "é".encode() in (folder / "README.md").read_bytes()
    assert "pâtissière".encode() in (folder / "final_data.jsonl").read_bytes()
