"""Nothing secret in what a run writes or prints: credentials in --base-url, a key in task.yaml,
a key in OPENAI_API_KEY. Real runs of the CLI against the fake server; every file of the output
folder and everything printed is searched for the secret strings."""

import base64
import socket
from pathlib import Path

import pytest
import yaml
from conftest import outputs, run_cli
from fake_lm import FakeServer

URL_PASSWORD, QUERY_KEY, FILE_KEY, ENV_KEY = "hunter2-pw", "qk-8812", "sk-file-5531", "sk-env-7790"
SECRETS = (URL_PASSWORD, QUERY_KEY, FILE_KEY, ENV_KEY)
FOLDER = Path("output/public/examples/chit_chat")


def with_credentials(url: str) -> str:
    """The fake server's URL as a gateway wants it: user:password@ and a key in the query, no path."""
    return url.replace("http://", f"http://alice:{URL_PASSWORD}@") + f"?api_key={QUERY_KEY}"


def key_in_task_file(task_dir: Path) -> None:
    task = yaml.safe_load((task_dir / "task.yaml").read_text())
    task["engine"]["api_key"] = FILE_KEY
    (task_dir / "task.yaml").write_text(yaml.safe_dump(task))


def assert_no_secret(task_dir: Path, *printed: str) -> None:
    files = [p for p in (task_dir / "output").rglob("*") if p.is_file()]
    for secret in SECRETS:
        assert [str(p) for p in files if secret in p.read_text(errors="replace")] == [], secret
        assert [text for text in printed if secret in text] == [], secret


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@pytest.mark.parametrize("engine, chat_path", [("openai", "/v1/chat/completions"), ("ollama", "/api/chat")])
def test_credentials_work_and_never_reach_the_files_or_the_screen(task_dir, server, engine, chat_path):
    key_in_task_file(task_dir)
    url = with_credentials(server.url)
    done = run_cli("--engine", engine, "--base-url", url, "-n", 3, "--restart", "--seed", 1, cwd=task_dir)
    assert done.returncode == 0, done.stderr
    assert len(outputs(task_dir)[0]) == 3
    # The credentials did their job: every request carried the query and the basic auth of the URL.
    basic = "Basic " + base64.b64encode(f"alice:{URL_PASSWORD}".encode()).decode()
    assert server.received and all(path.endswith(f"?api_key={QUERY_KEY}") and auth == basic
                                   for path, auth in server.received)
    assert any(path == f"{chat_path}?api_key={QUERY_KEY}" for path, _ in server.received)
    assert_no_secret(task_dir, done.stdout, done.stderr)
    assert "engine.api_key" in done.stderr and "OPENAI_API_KEY" in done.stderr  # the warning
    card = (task_dir / FOLDER / "README.md").read_text()
    assert "http://***@127.0.0.1:" in card and "?api_key=***" in card  # the command is there, masked
    # The trace prints prompts and replies, never what went into the headers or the URL.
    traced = run_cli("trace", "--engine", engine, "--base-url", url, cwd=task_dir)
    assert traced.returncode == 0, traced.stderr
    assert "ACCEPTED" in traced.stdout
    assert_no_secret(task_dir, traced.stdout, traced.stderr)


def test_an_api_key_from_the_environment_is_sent_as_bearer_and_masked_when_echoed(task_dir):
    # A gateway that echoes the Authorization header in its error body, call after call: the run
    # stops, and its Error line quotes the last failure.
    with FakeServer() as echoing:
        echoing.faults.extend(["echo"] * 20)
        done = run_cli("--engine", "openai", "--base-url", echoing.url, "-n", 2, "--restart",
                       "--concurrency", 1, cwd=task_dir, env={"OPENAI_API_KEY": ENV_KEY})
        assert {auth for _, auth in echoing.received} == {f"Bearer {ENV_KEY}"}
    assert done.returncode == 1
    assert "HTTP 400" in done.stderr and "Authorization: Bearer ***" in done.stderr
    assert "LM call failed" in (task_dir / FOLDER / "runs.jsonl").read_text()
    assert_no_secret(task_dir, done.stdout, done.stderr)


def test_errors_and_notes_name_the_server_without_its_credentials(task_dir, server):
    key_in_task_file(task_dir)
    down = with_credentials(closed_port_url())
    # One of two servers down: a note names it; both down: an Error line names it.
    fleet = run_cli("--engine", "openai", "--base-url", f"{with_credentials(server.url)},{down}", "-n", 1,
                    "--restart", cwd=task_dir)
    assert fleet.returncode == 0, fleet.stderr
    assert "note: cannot reach an OpenAI-compatible server at http://***@127.0.0.1:" in fleet.stderr
    alone = run_cli("--engine", "openai", "--base-url", down, "-n", 1, "--restart", cwd=task_dir)
    assert alone.returncode == 1
    assert "\nError: cannot reach an OpenAI-compatible server at http://***@127.0.0.1:" in alone.stderr
    assert "?api_key=***" in alone.stderr
    # A URL that is still malformed is refused, masked; so is a mistyped secret flag's value.
    malformed = run_cli("--base-url", f"http://alice:{URL_PASSWORD}@host:port", cwd=task_dir)
    assert malformed.returncode == 2
    assert malformed.stderr.startswith("Error: argument --base-url: 'http://***@host:port' is not a URL")
    flag = run_cli("--api-key", FILE_KEY, cwd=task_dir)
    assert flag.returncode == 2 and flag.stderr.startswith("Error: unknown flag --api-key: ")  # its value not shown
    assert_no_secret(task_dir, *(r.stdout + r.stderr for r in (fleet, alone, malformed, flag)))


def test_a_key_of_the_wrong_type_in_the_task_file_is_not_echoed(task_dir):
    task = yaml.safe_load((task_dir / "task.yaml").read_text())
    task["engine"]["api_key"] = 55316677
    (task_dir / "task.yaml").write_text(yaml.safe_dump(task))
    done = run_cli("-n", 1, cwd=task_dir)
    assert done.returncode == 1
    assert done.stderr == "Error: task.yaml: engine.api_key: expected a string or null, got ***\n"
