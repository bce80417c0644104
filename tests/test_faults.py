"""Faults as they happen: the generator killed with SIGKILL, the server dying mid-run, two runs
on one folder, garbage from the model. Real subprocesses, real sockets, real files."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, outputs, run_cli
from fake_lm import FakeServer, canned_reply

OUT = "output/public/examples/chit_chat"


def start_cli(*args, cwd):
    return subprocess.Popen([sys.executable, "-m", "chitchat_gen", *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def wait_for_calls(server, count):
    """Until the run is past its start-up check and generating (a busy machine starts slowly)."""
    for _ in range(1200):
        if len(server.chat_requests()) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"the run made {len(server.chat_requests())} LM calls in 60 s, not {count}")


def assert_consistent(task_dir):
    final_lines = (task_dir / OUT / "final_data.jsonl").read_text().splitlines(keepends=True)
    assert all(line.endswith("\n") for line in final_lines)
    final, formatted = outputs(task_dir)
    ids = [r["conversation_id"] for r in final]
    assert ids == [r["conversation_id"] for r in formatted] and len(set(ids)) == len(ids)
    return ids


def test_sigkill_at_random_moments_then_resume_gives_exactly_n(task_dir):
    rng = random.Random(3)
    final = task_dir / OUT / "final_data.jsonl"
    # 200 conversations take ~7 s here, longer than the four kill windows together: every kill
    # lands in a run that still has work to do (with fewer, a run could finish inside its window
    # and the next start would have nothing to do and make no call).
    with FakeServer(latency=0.01) as server:
        for _ in range(4):
            process = start_cli("-n", 200, "--concurrency", 4, "--base-url", server.url, "--quiet", cwd=task_dir)
            # The random moment is counted from the first LM call, not from the start: a busy machine
            # may take longer than the whole window to import and check the engine.
            wait_for_calls(server, len(server.chat_requests()) + 1)
            time.sleep(rng.uniform(0.0, 1.2))
            process.send_signal(signal.SIGKILL)
            process.wait()
        survivors = final.read_text() if final.exists() else ""  # every kill may come before the first write
        result = run_cli("-n", 200, "--concurrency", 4, "--base-url", server.url, cwd=task_dir)
    assert result.returncode == 0, result.stderr
    ids = assert_consistent(task_dir)
    assert len(ids) == 200
    kept = [line for line in survivors.splitlines(keepends=True) if line.endswith("\n")]
    assert len(kept) < 200  # the kills came while there was work left
    assert (task_dir / OUT / "final_data.jsonl").read_text().startswith("".join(kept))  # nothing earlier lost


def test_a_server_that_dies_and_comes_back_within_the_retries(task_dir):
    server = FakeServer(latency=0.01).__enter__()
    port = server.httpd.server_address[1]
    process = start_cli("-n", 12, "--concurrency", 2, "--base-url", server.url, "--quiet", cwd=task_dir)
    wait_for_calls(server, 5)
    server.__exit__()
    time.sleep(1.0)
    with FakeServer(port=port):
        stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert len(assert_consistent(task_dir)) == 12


def test_a_server_gone_for_good_stops_the_run_with_one_error_and_keeps_the_outputs(task_dir):
    server = FakeServer(latency=0.02).__enter__()
    process = start_cli("-n", 200, "--concurrency", 2, "--base-url", server.url, "--quiet", cwd=task_dir)
    wait_for_calls(server, 40)  # some conversations written before the server goes
    server.__exit__()
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 1
    assert stderr.strip().startswith("Error: the run stopped (") and "failed on LM calls" in stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    kept = assert_consistent(task_dir)
    assert 0 < len(kept) < 200


def test_a_server_that_takes_calls_and_never_answers_stops_the_run_naming_the_timeout(task_dir):
    with FakeServer(hang=True) as server:
        result = run_cli("-n", 5, "--timeout", 1, "--base-url", server.url, "--quiet", cwd=task_dir)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: the run stopped (") and "timed out after 1 s each" in lines[0]
    assert "raise --timeout" in lines[0] and "Traceback" not in result.stderr


def test_empty_replies_are_retried_not_dropped(task_dir):
    with FakeServer(fault_share=0.3, fault_kinds=("empty",)) as server:
        result = run_cli("-n", 5, "--base-url", server.url, "--quiet", cwd=task_dir)
    assert result.returncode == 0, result.stderr
    assert server.faulted["empty"] > 0 and "message empty" not in result.stdout
    assert len(assert_consistent(task_dir)) == 5


def test_two_runs_on_one_folder_are_refused(task_dir):
    with FakeServer(latency=0.05) as server:
        first = start_cli("-n", 50, "--base-url", server.url, "--quiet", cwd=task_dir)
        deadline = time.monotonic() + 20
        while not (task_dir / OUT / ".lock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = run_cli("-n", 50, "--base-url", server.url, cwd=task_dir)
        first.kill()
        first.wait()
    assert second.returncode == 1
    assert second.stderr.strip() == f"Error: {OUT} is in use by another run (pid {first.pid}): wait for it, or use another --output-dir"


@pytest.mark.parametrize("command", [["stats", OUT], ["export", OUT, "--format", "openai"], ["trace"], ["-n", 4]])
def test_a_reader_that_leaves_early_ends_the_output_quietly(task_dir, server, command):
    """`... | head`: stdout closed before the command writes; no BrokenPipeError traceback."""
    assert run_cli("-n", 3, "--base-url", server.url, cwd=task_dir).returncode == 0
    process = start_cli(*command, "--base-url", server.url, cwd=task_dir) if command[0] in ("trace", "-n") else \
        start_cli(*command, cwd=task_dir)
    process.stdout.close()  # the reader is gone before the first line
    stderr = process.communicate(timeout=120)[1]
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    assert process.returncode == 141, stderr


def test_garbage_model_output_is_dropped_or_tolerated_never_a_crash(task_dir):
    rng = random.Random(5)
    junk = ["", "   ", "{not json", '{"eligible": 5}', "User: \nAssistant:", "As an AI language model, I cannot.",
            '"', "x" * 3000]

    def reply(messages, schema):
        return rng.choice(junk) if rng.random() < 0.3 else canned_reply(messages, schema)

    with FakeServer(reply=reply) as server:
        result = run_cli("-n", 10, "--base-url", server.url, "--concurrency", 4, cwd=task_dir)
    assert result.returncode == 0, result.stderr
    assert len(assert_consistent(task_dir)) == 10
    assert "dropped" in result.stdout
    final, formatted = outputs(task_dir)
    assert all(m["content"].strip() for line in formatted for m in line["messages"])


def test_every_bad_input_is_one_error_line_exit_1_and_leaves_outputs_alone(task_dir, server):
    """The whole bad-input corpus of test_task.py, through the real CLI, over an existing dataset."""
    import yaml
    from test_task import PERSONA_CASES, SEED_CASES, TASK_CASES

    assert run_cli("-n", 2, "--base-url", server.url, cwd=task_dir).returncode == 0
    out = task_dir / OUT
    before = {name: (out / name).read_bytes() for name in ("final_data.jsonl", "formatted_output.jsonl")}
    pristine = {name: (task_dir / name).read_text() for name in ("task.yaml", "personas.jsonl", "seed_examples.jsonl")}
    cases = [("task.yaml", name, change, message) for name, change, message in TASK_CASES]
    cases += [("personas.jsonl", name, text, message) for name, text, message in PERSONA_CASES]
    cases += [("seed_examples.jsonl", name, text, message) for name, text, message in SEED_CASES]
    for file, name, change, message in cases:
        if file == "task.yaml":
            raw = yaml.safe_load(pristine["task.yaml"])
            change(raw)
            (task_dir / file).write_text(yaml.safe_dump(raw, sort_keys=False))
        else:
            (task_dir / file).write_text(change)
        result = run_cli("-n", 5, "--restart", cwd=task_dir)  # no --base-url: it would mask the task's own
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1, name
        assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], (name, result.stderr)
        assert {n: (out / n).read_bytes() for n in before} == before, name
        (task_dir / file).write_text(pristine[file])
    assert len(cases) >= 45


def test_a_fifth_of_calls_failing_in_every_way_still_gives_exactly_n(task_dir):
    rng = random.Random(5)
    kinds = ["500", "503", "429", "reset", "garbage", "truncated"]
    with FakeServer(latency=0.002) as server:
        server.faults.extend(rng.choice(kinds) if rng.random() < 0.2 else None for _ in range(2000))
        result = run_cli("-n", 20, "--concurrency", 8, "--base-url", server.url, "--quiet", cwd=task_dir)
        answered = sum(server.answered.values())
    assert result.returncode == 0, result.stderr
    assert len(assert_consistent(task_dir)) == 20
    assert server.answered[200] < answered  # the faults were met
