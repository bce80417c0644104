"""The HTTP engines against a real local server (tests/fake_lm.py): bodies sent, replies read,
start-up checks, retries (plug.make_chat's retry.send; the core's chat alone sends a call once)."""

import os
import socket
import subprocess
import sys

import pytest
from conftest import ROOT
from fake_lm import FakeServer

from chitchat_gen import chat as core_chat
from chitchat_gen import retry
from chitchat_gen.errors import ConfigError, LMError, NoAnswer
from chitchat_gen.plug import make_chat
from chitchat_gen.preflight import check_engine
from chitchat_gen.ratelimit import make_pool
from chitchat_gen.task import ENGINE_FIELDS

DEFAULT_ENGINE = {spec["name"]: spec["default"] for spec in ENGINE_FIELDS}


def engine(kind, *servers, **extra):
    return {**DEFAULT_ENGINE, "type": kind, "model": "granite4:3b", "retries": 2,
            "base_urls": [s.url if hasattr(s, "url") else s for s in servers], **extra}


def free_port_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there once closed


SCHEMA = {"type": "object", "properties": {"eligible": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}}}}


def test_ollama_request_is_non_streaming_with_options_and_format(server):
    usage = []
    chat = make_chat(engine("ollama", server, max_tokens=77), on_usage=lambda p, c, k: usage.append((p, c, k)))
    reply = chat([{"role": "user", "content": "hello"}], json_schema=SCHEMA, seed=42, temperature=0.2)
    assert '"eligible"' in reply
    path, body = server.requests[-1]
    assert path == "/api/chat"
    assert body["stream"] is False and body["model"] == "granite4:3b"
    assert body["options"] == {"temperature": 0.2, "num_predict": 77, "seed": 42}
    assert body["format"] == SCHEMA
    assert usage == [(10, 5, 0)]


@pytest.mark.parametrize("kind, cached", [("openai", "openai"), ("openai", "llama-server"), ("ollama", None)])
def test_usage_reads_prompt_completion_and_cached_tokens_as_each_server_reports_them(kind, cached):
    """OpenAI/vLLM: usage.prompt_tokens_details.cached_tokens; llama-server: timings.cache_n;
    Ollama: prompt_eval_count counts only the tokens it evaluated (no cached count)."""
    shared = [{"role": "system", "content": "You are a patient assistant. " * 20}]
    usage = []
    with FakeServer(prefix_cache=True, cached=cached or "openai") as fake:
        chat = make_chat(engine(kind, fake), on_usage=lambda *counts: usage.append(counts))
        chat(shared + [{"role": "user", "content": "First question about tea?"}])
        chat(shared + [{"role": "user", "content": "Second question about coffee?"}])
    first, second = fake.cache_log
    assert first["cached"] == 0 and second["cached"] >= 512  # the fake served the shared system text from cache
    if kind == "openai":
        assert usage[1] == (second["chars"] // 4, usage[1][1], second["cached"] // 4) and usage[1][1] > 0
    else:
        assert usage[1] == ((second["chars"] - second["cached"]) // 4, usage[1][1], 0)
    assert usage[0][2] == 0


def test_ollama_plain_text_has_no_format(server):
    make_chat(engine("ollama", server))([{"role": "user", "content": "hi"}])
    body = server.requests[-1][1]
    assert "format" not in body and "seed" not in body["options"]


def test_openai_request_uses_response_format_and_bearer_key(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    chat = make_chat(engine("openai", server, max_tokens=33))
    assert chat([{"role": "user", "content": "hi"}], json_schema=SCHEMA, seed=1)
    path, body = server.requests[-1]
    assert path == "/v1/chat/completions"
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "reply", "schema": SCHEMA}}
    assert body["max_tokens"] == 33 and body["seed"] == 1


def test_openai_falls_back_when_the_server_refuses_json_schema():
    with FakeServer(json_forms=("text", "json_object")) as fake:
        chat = make_chat(engine("openai", fake))
        for _ in range(3):
            assert '"eligible"' in chat([{"role": "user", "content": "hi"}], json_schema=SCHEMA)
        forms = [body["response_format"]["type"] for body in fake.chat_requests()]
        assert forms == ["json_schema", "json_object", "json_object", "json_object"]


def test_openai_drops_the_constraint_when_no_json_form_is_accepted():
    with FakeServer(json_forms=("text",)) as fake:
        chat = make_chat(engine("openai", fake))
        chat([{"role": "user", "content": "hi"}], json_schema=SCHEMA)
        assert [b.get("response_format", {}).get("type") for b in fake.chat_requests()] == ["json_schema", "json_object", None]


@pytest.mark.parametrize("kind", ["ollama", "openai"])
def test_a_reply_cut_by_the_token_cap_loses_its_unfinished_sentence(kind):
    with FakeServer(reply=lambda m, s: "Tea is lovely. Green tea is the best kind of") as fake:
        chat = make_chat(engine(kind, fake))
        assert chat([{"role": "user", "content": "hi"}]) == "Tea is lovely. Green tea is the best kind of"
        fake.finish = "length"
        assert chat([{"role": "user", "content": "hi"}]) == "Tea is lovely."


def test_calls_spread_over_several_servers():
    with FakeServer() as one, FakeServer() as two:
        chat = make_chat(engine("ollama", one, two))
        for _ in range(10):
            chat([{"role": "user", "content": "hi"}])
        assert len(one.chat_requests()) >= 1 and len(two.chat_requests()) >= 1  # each gets measured


@pytest.mark.parametrize("fault", ["500", "503", "429", "reset", "garbage", "truncated", "empty"])
def test_transient_faults_are_retried(server, fault):
    server.faults.extend([fault, fault])
    reply = make_chat(engine("ollama", server))([{"role": "user", "content": "hi"}])
    assert reply.startswith("Here is")
    assert len(server.chat_requests()) == 3


def test_a_timeout_is_retried(server):
    server.faults.append("hang")
    reply = make_chat(engine("ollama", server, timeout=0.5))([{"role": "user", "content": "hi"}])
    assert reply and len(server.chat_requests()) == 2


def test_a_server_that_never_answers_stops_the_run_naming_the_timeout():
    with FakeServer(hang=True) as hanging:
        with pytest.raises(NoAnswer, match=r"timed out after 0\.3 s each.*raise --timeout"):
            make_chat(engine("ollama", hanging, timeout=0.3, retries=4))([{"role": "user", "content": "hi"}])
        assert len(hanging.chat_requests()) == 2  # two timeouts, two timeouts' time with no answer: enough


def test_an_empty_message_that_stays_empty_fails_the_call_as_the_servers_fault(server):
    server.faults.extend(["empty"] * 3)
    with pytest.raises(LMError, match="answered 200 with an empty message"):
        make_chat(engine("openai", server))([{"role": "user", "content": "hi"}])


def test_retries_are_bounded(server):
    server.faults.extend(["500"] * 10)
    with pytest.raises(LMError, match="HTTP 500"):
        make_chat(engine("ollama", server))([{"role": "user", "content": "hi"}])
    assert len(server.chat_requests()) == 3  # 1 + retries


def test_a_client_error_is_not_retried(server):
    with pytest.raises(LMError, match="HTTP 404"):
        make_chat(engine("ollama", server, model="missing"))([{"role": "user", "content": "hi"}])
    assert len(server.chat_requests()) == 1


@pytest.mark.parametrize("fault, problem", [("500", "HTTP 500 from"), ("429", "HTTP 429 from"), ("503", "HTTP 503 from"),
                                            ("empty", "answered 200 with an empty message")])
def test_the_core_chat_sends_a_failing_call_once(server, fault, problem):
    server.faults.append(fault)
    with pytest.raises(LMError, match=problem):
        core_chat.make_chat(engine("ollama", server))([{"role": "user", "content": "hi"}])
    assert len(server.chat_requests()) == 1


def test_the_retry_policy_sends_the_call_the_core_gave_up_on_again(server):
    settings = engine("ollama", server)
    server.faults.append("500")
    with pytest.raises(LMError, match="HTTP 500"):
        core_chat.make_chat(settings, pool=make_pool(settings))([{"role": "user", "content": "hi"}])
    server.faults.append("500")
    pool = make_pool(settings)
    reply = core_chat.make_chat(settings, pool=pool, send=retry.send)([{"role": "user", "content": "hi"}])
    assert reply.startswith("Here is") and len(server.chat_requests()) == 1 + 2
    assert pool.report()[0]["answers"] == {500: 1, 200: 1}  # the pool learns of each attempt, as before


def test_a_send_policy_sees_each_attempt_as_the_pool_was_told(server):
    seen = []

    def send(attempt, settings, pool):  # a policy of one's own: try three times, note each outcome
        for _ in range(3):
            tried = attempt()
            seen.append((tried.outcome, tried.response.status_code))
            if tried.outcome == "ok":
                return tried.reply
        raise LMError(tried.problem)

    server.faults.extend(["429", "500"])
    assert core_chat.make_chat(engine("openai", server), send=send)([{"role": "user", "content": "hi"}])
    assert seen == [("busy", 429), ("failed", 500), ("ok", 200)]


def test_check_ollama_passes_when_the_model_is_installed(server):
    check_engine(engine("ollama", server))
    assert server.requests[-1][0] == "/api/tags"


def test_check_ollama_accepts_a_name_without_tag():
    with FakeServer(models=["llama3:latest"]) as fake:
        check_engine(engine("ollama", fake, model="llama3"))


def test_check_ollama_unreachable_names_ollama_serve_and_local():
    with pytest.raises(ConfigError) as error:
        check_engine(engine("ollama", free_port_url()))
    assert "cannot reach Ollama at http://127.0.0.1:" in str(error.value)
    assert "ollama serve" in str(error.value) and "--engine local" in str(error.value)


def test_check_ollama_missing_model_names_ollama_pull(server):
    with pytest.raises(ConfigError, match=r"model 'qwen3:8b' not found at .*: run 'ollama pull qwen3:8b'"):
        check_engine(engine("ollama", server, model="qwen3:8b"))


def test_check_openai_picks_the_served_model_when_none_given(server):
    settings = engine("openai", server, model=None)
    assert check_engine(settings)["model"] == "granite4:3b"
    assert settings["model"] is None  # the caller's settings are left as they were


def test_check_openai_model_not_served(server):
    with pytest.raises(ConfigError, match=r"model .gpt-x. is not served at .* \(it serves: granite4:3b\)"):
        check_engine(engine("openai", server, model="gpt-x"))


def test_check_openai_unreachable():
    with pytest.raises(ConfigError, match="cannot reach an OpenAI-compatible server"):
        check_engine(engine("openai", free_port_url()))


def test_check_a_url_that_is_not_an_lm_server(server):
    with pytest.raises(ConfigError, match="answered HTTP 404 .* right --base-url"):
        check_engine(engine("ollama", server.url + "/wrong"))


def test_local_with_a_missing_gguf_path():
    with pytest.raises(ConfigError, match="local model file /nope.gguf not found"):
        check_engine({**DEFAULT_ENGINE, "type": "local", "model": "/nope.gguf", "base_urls": []})


def test_a_proxy_from_the_environment_is_used_though_read_once(monkeypatch):
    """requests' environment (proxies, CA bundle, ~/.netrc) is read once per endpoint, not per request."""
    with FakeServer() as proxy:
        for name in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(name, proxy.url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        chat = make_chat(engine("ollama", "http://llm.invalid:9", retries=0))
        for _ in range(2):
            with pytest.raises(LMError, match="HTTP 404"):
                chat([{"role": "user", "content": "hi"}])
    assert [path for path, _ in proxy.received] == ["http://llm.invalid:9/api/chat"] * 2


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_the_local_engine_uses_the_cores_it_may_run_on_not_all_the_machine_has():
    """A process pinned to one core (taskset, a container's cpuset) gets one llama.cpp thread."""
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from chitchat_gen.local import usable_cores; print(usable_cores())")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert child.stdout.strip() == "1", child.stderr
