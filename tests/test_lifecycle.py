"""Every way a run ends leaves the folder whole: the CLI as a real process against the fake server.

Nothing to do (a damaged folder is still repaired), a write that fails (a file size limit, a full
tmpfs), SIGTERM and SIGINT (the conversations in flight are kept), a second signal (at once).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, outputs, read_jsonl, run_cli
from fake_lm import FakeServer

OUT = Path("output/public/examples/chit_chat")


def assert_in_step(folder):
    """Both files whole, line for line the same conversations; returns how many."""
    final, formatted = outputs(folder)
    assert [r["conversation_id"] for r in final] == [r["conversation_id"] for r in formatted]
    return len(final)


def last_run(folder):
    return read_jsonl(folder / OUT / "runs.jsonl")[-1]


def start_cli(*args, cwd, limit_file_size=None):
    def limits():  # in the child: its files cannot grow past the limit (the write fails with EFBIG)
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))
    return subprocess.Popen([sys.executable, "-m", "chitchat_gen", *map(str, args)], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            preexec_fn=limits if limit_file_size else None)


def wait_for_lines(path, count, process):
    while process.poll() is None and (not path.exists() or len(path.read_bytes().splitlines()) < count):
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be stopped: nothing was tested"


def test_nothing_to_do_still_repairs_a_damaged_folder_and_says_so(task_dir, server):
    assert run_cli("-n", 10, "--restart", "--quiet", "--base-url", server.url, cwd=task_dir).returncode == 0
    final, formatted = task_dir / OUT / "final_data.jsonl", task_dir / OUT / "formatted_output.jsonl"
    # A kill between the two appends of the 11th conversation, after a torn 11th record.
    with open(final, "a", encoding="utf-8") as out:
        out.write('{"conversation_id": "torn", "steps": [')
    formatted.write_text("".join(formatted.read_text(encoding="utf-8").splitlines(keepends=True)[:9]), encoding="utf-8")
    calls = len(server.chat_requests())
    result = run_cli("-n", 10, "--quiet", "--base-url", server.url, cwd=task_dir)
    assert result.returncode == 0, result.stderr
    assert "already holds 10 conversations (>= 10): nothing to do" in result.stdout
    assert "note: final_data.jsonl: moved 1 bad line to rejected.jsonl (line 11: torn last line" in result.stderr
    assert assert_in_step(task_dir) == 10
    assert len(read_jsonl(task_dir / OUT / "rejected.jsonl")) == 1
    assert len(server.chat_requests()) == calls  # no LM call for a run with nothing to make


def test_a_write_that_fails_is_one_line_and_leaves_the_files_in_step(task_dir, server):
    limit = 30_000  # bytes: final_data.jsonl reaches it after a few conversations
    run = start_cli("-n", 200, "--restart", "--quiet", "--base-url", server.url, cwd=task_dir, limit_file_size=limit)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 1
    assert err.count("\n") == 1 and err.startswith(
        f"Error: cannot write {Path('output/public/examples/chit_chat/final_data.jsonl')}: file too large (EFBIG): "
        "the file reached a size limit (ulimit -f, or the filesystem's): raise it, then run the same command without --restart")
    kept = assert_in_step(task_dir)  # the conversation whose write failed is in neither file
    assert kept > 0 and (task_dir / OUT / "final_data.jsonl").stat().st_size <= limit
    entry = last_run(task_dir)
    assert entry["accepted"] == kept and entry["stopped"].startswith("cannot write")
    assert f"{kept} (stopped: cannot write" in (task_dir / OUT / "README.md").read_text(encoding="utf-8")
    resumed = run_cli("-n", kept + 3, "--quiet", "--base-url", server.url, cwd=task_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert assert_in_step(task_dir) == kept + 3


@pytest.fixture
def small_disk(tmp_path):
    """A 300 KB tmpfs (root only; skipped where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_full_disk_is_one_line_and_a_resume_after_freeing_space_reaches_n(task_dir, server, small_disk):
    run = run_cli("-n", 300, "--restart", "--quiet", "--base-url", server.url, "--output-dir", small_disk,
                  cwd=task_dir)
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1 and "no space left on device (ENOSPC): free space, then run the same command " \
                                          "without --restart" in run.stderr
    folder = small_disk / "public" / "examples" / "chit_chat"
    final = [json.loads(line) for line in (folder / "final_data.jsonl").read_text(encoding="utf-8").splitlines()]
    formatted = (folder / "formatted_output.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(final) == len(formatted) > 0
    assert not list(folder.glob("*.tmp"))  # a card that did not fit leaves no half-written draft
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)  # space freed
    resumed = run_cli("-n", len(final) + 5, "--quiet", "--base-url", server.url, "--output-dir", small_disk,
                      cwd=task_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert len((folder / "final_data.jsonl").read_text(encoding="utf-8").splitlines()) == len(final) + 5
    assert len((folder / "formatted_output.jsonl").read_text(encoding="utf-8").splitlines()) == len(final) + 5


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_keeps_the_conversations_in_flight_then_writes_the_card_and_the_run_log(task_dir, signum, code):
    with FakeServer(latency=0.02) as server:
        run = start_cli("-n", 500, "--restart", "--quiet", "--concurrency", 4, "--grace", 60,
                        "--base-url", server.url, cwd=task_dir)
        wait_for_lines(task_dir / OUT / "final_data.jsonl", 3, run)
        run.send_signal(signum)
        calls_at_signal = len(server.chat_requests())
        out, err = run.communicate(timeout=120)
    assert run.returncode == code, err
    name = signal.Signals(signum).name
    assert f"Stopped by {name}: the conversations accepted are kept" in err and "Traceback" not in err
    kept = assert_in_step(task_dir)
    entry = last_run(task_dir)
    assert entry["stopped"] == name and entry["accepted"] == kept
    assert f"{kept} (stopped: {name})" in (task_dir / OUT / "README.md").read_text(encoding="utf-8")
    # The 4 in flight finished (no call of theirs was cut) and no new conversation was started:
    # a conversation makes about 14 calls, so at most 4 x 15 calls came after the signal.
    assert entry["dropped"].get("LM call failed", 0) == 0
    assert len(server.chat_requests()) - calls_at_signal <= 4 * 15


def test_a_second_signal_stops_at_once_and_the_folder_stays_consistent(task_dir):
    with FakeServer(latency=1.0) as server:  # each conversation needs ~14 s: the grace would be long
        run = start_cli("-n", 50, "--restart", "--quiet", "--concurrency", 2, "--grace", 3600,
                        "--base-url", server.url, cwd=task_dir)
        while run.poll() is None and len(server.chat_requests()) < 3:
            time.sleep(0.05)
        run.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=60)  # a guard against a hang, not a measurement
    assert run.returncode == 143, err
    assert assert_in_step(task_dir) == 0
    assert last_run(task_dir)["stopped"] == "SIGTERM"
    assert (task_dir / OUT / "README.md").is_file()


def test_the_library_run_does_what_the_cli_does(task_dir, monkeypatch):
    from fake_lm import fake_chat

    from chitchat_gen import ConfigError, load_task, run
    monkeypatch.chdir(task_dir)
    first = run("task.yaml", 3, chat=fake_chat, seed=1)
    assert (first["accepted"], first["existing"], first["stopped"], first["nothing_to_do"]) == (3, 0, None, False)
    assert first["folder"] == str(OUT) and first["seed"] == 1 and first["calls"] > 0
    more = run("task.yaml", 5, chat=fake_chat, seed=1)  # resumes, as the CLI does without --restart
    assert (more["accepted"], more["existing"]) == (2, 3)
    assert assert_in_step(task_dir) == 5
    runs = read_jsonl(task_dir / OUT / "runs.jsonl")
    assert [(r["engine"], r["model"], r["accepted"], r["stopped"]) for r in runs] == [("function", "fake_chat", 3, None),
                                                                                     ("function", "fake_chat", 2, None)]
    assert "fake_chat" in (task_dir / OUT / "README.md").read_text(encoding="utf-8")
    done = run(load_task("task.yaml"), 5, chat=fake_chat)
    assert done["nothing_to_do"] and done["existing"] == 5 and done["accepted"] == 0
    with pytest.raises(ConfigError, match="with a loaded task, give overrides to load_task"):
        run(load_task("task.yaml"), 5, chat=fake_chat, seed=2)


def folder_bytes(folder):
    return {path.name: path.read_bytes() for path in (folder / OUT).iterdir() if path.is_file() and path.name != ".lock"}


@pytest.mark.parametrize("change, parts", [
    (lambda text: text.replace("weight: 0.35", "weight: 0.5"), "patterns"),
    (lambda text: text.replace("max_turns: 4", "max_turns: 5"), "turn bounds"),
    (lambda text: text.replace("personas.jsonl", "other_personas.jsonl"), "personas"),
    (lambda text: text + "prompts:\n  ASSISTANT_SYSTEM: \"You help. Scenario: $scenario\"\n", "prompts"),
])
def test_a_resume_from_another_task_is_refused_unless_asked_to_mix(task_dir, server, change, parts):
    assert run_cli("-n", 2, "--base-url", server.url, "--quiet", cwd=task_dir).returncode == 0
    (task_dir / "other_personas.jsonl").write_text('{"role": "retired sailor"}\n')
    task = task_dir / "task.yaml"
    task.write_text(change(task.read_text()))
    before = folder_bytes(task_dir)
    refused = run_cli("-n", 4, "--base-url", server.url, "--quiet", cwd=task_dir)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 1 and len(lines) == 1, refused.stderr
    assert lines[0].startswith(f"Error: {OUT} holds 2 conversations made with other {parts} than ") and "--mix" in lines[0]
    assert folder_bytes(task_dir) == before  # refused before anything was touched
    mixed = run_cli("-n", 4, "--base-url", server.url, "--quiet", "--mix", cwd=task_dir)
    assert mixed.returncode == 0, mixed.stderr
    assert assert_in_step(task_dir) == 4
    again = run_cli("-n", 5, "--base-url", server.url, "--quiet", cwd=task_dir)  # the latest run's task now
    assert again.returncode == 0 and assert_in_step(task_dir) == 5, again.stderr


def test_a_resume_with_another_engine_or_model_is_said_and_allowed(task_dir, server):
    assert run_cli("-n", 2, "--base-url", server.url, "--quiet", cwd=task_dir).returncode == 0
    result = run_cli("-n", 3, "--engine", "openai", "--model", "granite4:3b", "--base-url", server.url, "--quiet",
                     cwd=task_dir)
    assert result.returncode == 0, result.stderr
    assert "conversations so far were made with ollama granite4:3b, this run's with openai granite4:3b" in result.stderr
    assert assert_in_step(task_dir) == 3
