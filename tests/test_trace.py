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
    # how each prompt opens as an earlier one of the conversation did: a user-side call shares all
    # but its task with the one before, an assistant call the whole of the assistant's previous one
    assert "opens as call 2 (lm/flow_controller) for " in out and ", then:\n    'write a one-sentence" in out
    assert all(len(line) <= 80 for line in out.splitlines())
    assert "\033[" not in out  # no colour when stdout is not a terminal
    assert not (task_dir / "output").exists()
    assert len(server.chat_requests()) > 5


def test_an_override_that_breaks_the_shared_opening_still_works_and_trace_shows_where(task_dir, server):
    import yaml
    path = task_dir / "task.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["prompts"] = {  # written for the layout before version 0.2: per call first, persona in the system text
        "FLOW_USER": "Turn $turn. Scenario: $scenario\nConversation:\n$history\nMoves:\n$patterns\nReply as JSON.",
        "USER_SYSTEM": "You are role-playing a human user. Who you are: $persona Situation: $scenario"}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = run_cli("trace", "--base-url", server.url, "--seed", 3, cwd=task_dir)
    assert result.returncode == 0, result.stderr
    assert "ACCEPTED " in result.stdout
    # the second flow call parts from the first at the turn (trace wraps long lines: compare words)
    assert "then: '2. Scenario: A person number" in " ".join(result.stdout.split())
    flows = [body["messages"] for body in server.chat_requests() if "Turn 1. Scenario" in body["messages"][-1]["content"]]
    assert flows and "Who you are: Role:" in next(body["messages"][0]["content"] for body in server.chat_requests()
                                                   if body["messages"][-1]["content"].endswith("Your message:"))


def test_trace_shows_a_drop_and_goes_on(task_dir):
    from fake_lm import FakeServer, canned_reply
    replies = {"n": 0}

    def reply(messages, schema):
        if "helpful, friendly AI assistant" in messages[0]["content"] and replies["n"] < 2:
            replies["n"] += 1  # an echo twice: the stage asks again once, then drops (an empty reply is retried)
            return messages[-1]["content"]
        return canned_reply(messages, schema)

    with FakeServer(reply=reply) as fake:
        result = run_cli("trace", "--base-url", fake.url, cwd=task_dir)
    assert result.returncode == 0, result.stderr
    assert "lm/assistant/naive drops the conversation: assistant message: echo of the user" in result.stdout
    assert "DROPPED (lm/assistant/naive: assistant message: echo of the user)" in result.stdout
    assert "ACCEPTED " in result.stdout


def test_trace_takes_no_generation_flags(task_dir):
    result = run_cli("trace", "-n", 3, cwd=task_dir)
    assert result.returncode == 2 and result.stderr == "Error: unknown flag -n: see 'python -m chitchat_gen trace --help'\n"
