"""`python -m chitchat_gen trace`: one conversation, stage by stage, in 80 columns, no files."""

from conftest import run_cli


def test_trace_prints_every_stage_its_prompts_replies_and_decisions(task_dir, server):
    result = run_cli("trace", "--base-url", server.url, "--seed", 3, cwd=task_dir)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for stage in ("lm/scenario", "sample/persona", "lm/flow_controller", "lm/user/guided", "lm/assistant/naive"):
        assert f"== {stage}" in out
    assert "-- lm/scenario: LM call" in out and "[system]" in out and "[reply]" in out
    assert "eligible: chit_chat/" in out and "picked: chit_chat/" in out and "hint: " in out
    assert "-> TERMINATE (closing exchange follows)" in out
    assert "ACCEPTED " in out
    assert all(len(line) <= 80 for line in out.splitlines())
    assert "\033[" not in out  # no colour when stdout is not a terminal
    assert not (task_dir / "output").exists()
    assert len(server.chat_requests()) > 5


def test_trace_shows_a_drop_and_goes_on(task_dir):
    from fake_lm import FakeServer, canned_reply
    replies = {"n": 0}

    def reply(messages, schema):
        if "helpful, friendly AI assistant" in messages[0]["content"] and replies["n"] < 2:
            replies["n"] += 1  # empty twice: the stage asks again once, then drops
            return ""
        return canned_reply(messages, schema)

    with FakeServer(reply=reply) as fake:
        result = run_cli("trace", "--base-url", fake.url, cwd=task_dir)
    assert result.returncode == 0, result.stderr
    assert "lm/assistant/naive drops the conversation: assistant message empty" in result.stdout
    assert "DROPPED (lm/assistant/naive: assistant message empty)" in result.stdout
    assert "ACCEPTED " in result.stdout


def test_trace_takes_no_generation_flags(task_dir):
    result = run_cli("trace", "-n", 3, cwd=task_dir)
    assert result.returncode == 2 and result.stderr == "Error: unknown flag -n: see 'python -m chitchat_gen trace --help'\n"
