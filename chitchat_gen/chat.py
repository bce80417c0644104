"""The LM over HTTP: Ollama's REST API and OpenAI-compatible servers (vLLM, llama-server, ...).

Every engine is one function with the same shape, built by `make_chat(engine)`:

    chat = make_chat({"type": "ollama", "model": "granite4:3b", "base_urls": ["http://localhost:11434"], ...})
    text = chat([{"role": "user", "content": "Hi"}], json_schema=None, temperature=0.7, max_tokens=64, seed=1)

A call that fails raises `LMError`; the pipeline drops that conversation and goes on. Here each
call is sent once. Three seams: `pool`, the load control each request asks (ratelimit.Pool plugs
in here); `send`, the policy that decides what follows an attempt (retry.send: retries and
backpressure; plug.make_chat passes both); and `ENGINES`, where other engine types register
(local.py: the embedded model).
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import threading
import time
from typing import NamedTuple

import requests

from .errors import ConfigError, LMError
from .urls import endpoint_url, redact_url

RETRY_STATUS = {408, 500, 502, 504}  # a failure that may pass on a retry
BUSY_STATUS = {429, 503, 529}  # "slow down": not failure (retry.py waits it out, ratelimit.py lowers the pace)
HTTP_ENGINES = ("ollama", "openai")
# Other engine types register their make_chat(engine, on_usage) here when their module is
# imported; LOADED_BY says which module that is.
ENGINES: dict = {}
LOADED_BY = {"local": "import chitchat_gen.local first (chitchat_gen.generate, run and the CLI do)"}


class RoundRobin:
    """The core's load control: each call to the next URL in turn, no limits, no figures kept.

    ratelimit.Pool is the real one (routing, AIMD, rpm/tpm, health).
    """

    def __init__(self, urls: list[str]):
        self.urls = itertools.cycle(urls)

    def acquire(self, tokens: float = 0.0, timeout: float = float("inf")) -> dict:
        return {"url": next(self.urls)}

    def release(self, ticket: dict, outcome: str, **how) -> None:
        """Nothing is kept: no call waits here, so nothing learns from how one ended."""


class Attempt(NamedTuple):
    """How one attempt of a call ended: what a `send` policy decides on."""

    outcome: str  # as the pool was told: "ok", "busy" (429, 503, 529), "failed", "timeout" or "refused"
    problem: str  # what LMError says if the call ends here ("" when ok)
    ticket: dict  # the pool's, e.g. for pool.answering(ticket)
    waited: float  # seconds the pool held the attempt before it went
    reply: tuple | None = None  # (text, usage) when ok
    response: requests.Response | None = None  # the HTTP reply, when one came
    retry_after: float | None = None  # a busy reply's Retry-After, in seconds


def send_once(attempt, engine: dict, pool) -> tuple[str, tuple[int, int, int]]:
    """The core's send policy: one attempt; a call that does not get its reply raises LMError.

    A policy is `send(attempt, engine, pool) -> (text, usage)`. `attempt(waited=0.0)` sends the
    call once, having spent `waited` seconds of engine.max_wait already, and returns an `Attempt`
    (a failure no try would mend raises LMError there). retry.send sends again:

        make_chat(engine, pool=make_pool(engine), send=retry.send)
    """
    tried = attempt()
    if tried.outcome != "ok":
        raise LMError(tried.problem)
    return tried.reply


def make_chat(engine: dict, on_usage=None, pool=None, send=send_once):
    """Return `chat(messages, json_schema=None, **options) -> str` for the engine settings.

    `on_usage(prompt_tokens, completion_tokens, cached_tokens)` is called after each successful
    call (`usage_of` says what each server reports); `pool` (`acquire`, `release`; `describe` when
    acquire gives no ticket) routes and paces the calls; `send` (`send_once`) decides what follows an attempt.
    """
    if engine["type"] not in HTTP_ENGINES:
        if engine["type"] not in ENGINES:
            raise ConfigError(f"engine type '{engine['type']}' is not loaded: "
                              f"{LOADED_BY.get(engine['type'], 'register it in chat.ENGINES')}")
        return ENGINES[engine["type"]](engine, on_usage)
    pool = pool or RoundRobin(engine["base_urls"])
    session = requests.Session()
    # subtle: with trust_env, requests reads the proxy and CA bundle variables and ~/.netrc again on
    # every request (a profile: 6 % of the client's CPU); _environment reads them once per endpoint.
    session.trust_env = False
    session.environment = {}
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=256))
    session.mount("https://", requests.adapters.HTTPAdapter(pool_maxsize=256))
    build, parse = (_ollama_body, _ollama_reply) if engine["type"] == "ollama" else (openai_body, openai_reply)
    path = "/api/chat" if engine["type"] == "ollama" else "/v1/chat/completions"
    attempt = functools.partial(_attempt, session, pool, path, auth_headers(engine), engine, parse)

    # OpenAI's response_format {"type": "json_schema"} is refused by some servers (llama-cpp-python's
    # server takes only llama.cpp's {"type": "json_object", "schema": ...}); on the first refusal we
    # switch to that form, then to no constraint at all: the flow controller validates replies anyway.
    json_forms = ["json_schema", "json_object", None]
    forms_lock = threading.Lock()

    def chat(messages, json_schema=None, **options):
        while True:
            body = build(engine, messages, json_schema, options, json_forms[0])
            estimate = sum(len(str(m.get("content", ""))) for m in body["messages"]) / 4 + _cap(body)
            try:
                text, usage = send(functools.partial(attempt, body, estimate), engine, pool)
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


def openai_body(engine, messages, json_schema, options, json_form="json_schema"):
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


def openai_reply(reply: dict):
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


def auth_headers(engine: dict) -> dict:
    key = os.environ.get("OPENAI_API_KEY") or engine.get("api_key")
    return {"Authorization": f"Bearer {key}"} if engine["type"] == "openai" and key else {}


def _attempt(session, pool, path, headers, engine, parse, body, estimate, waited=0.0) -> Attempt:
    """POST `body` once, to the endpoint the pool gives within what is left of engine.max_wait
    (`waited` seconds are spent), and tell the pool how it went; the caller's send policy decides the rest.

    A failure another try would repeat raises LMError here: no endpoint free in time, 404, 400 (any
    status but 408, 5xx and the busy ones), a reply without its text, a complaint about response_format.
    """
    started = time.monotonic()
    ticket = pool.acquire(estimate, timeout=engine["max_wait"] - waited)
    held = time.monotonic() - started
    if ticket is None:
        raise LMError(f"no endpoint could take the call within engine.max_wait ({engine['max_wait']:g} s): "
                      f"{pool.describe()}")
    # subtle: the real URL goes on the wire; messages (drop reasons, Error: lines) get `url`, masked.
    url, sent = redact_url(ticket["url"]), time.monotonic()
    try:
        response = session.post(endpoint_url(ticket["url"], path), json=body, headers=headers, timeout=engine["timeout"],
                                **_environment(session, ticket["url"]))
    except requests.RequestException as exc:  # refused, reset (also mid-body), timed out, ...
        return Attempt(*_unanswered(exc, pool, ticket, url, engine), ticket, held)
    status, text = response.status_code, response.text
    if status == 200:
        reply, problem = _answered(response, text, parse, pool, ticket, url, sent)
        return Attempt("failed" if problem else "ok", problem or "", ticket, held, reply, response)
    if status in BUSY_STATUS and "response_format" not in text:
        wait = _retry_after(response)
        pool.release(ticket, "busy", status=status, retry_after=wait, headers=response.headers)
        return Attempt("busy", f"HTTP {status} from {url}: {text[:200]}", ticket, held, None, response, wait)
    return Attempt("failed", _refused(status, text, pool, ticket, url), ticket, held, None, response)


def _unanswered(exc: requests.RequestException, pool, ticket: dict, url: str, engine: dict) -> tuple[str, str]:
    """A request that got no HTTP reply: tell load control how it failed; return that outcome and the problem."""
    refused = isinstance(exc, requests.ConnectionError) and "refused" in str(exc).lower()
    outcome = "timeout" if isinstance(exc, requests.Timeout) else "refused" if refused else "failed"
    pool.release(ticket, outcome)
    after = f" after {engine['timeout']:g} s" if outcome == "timeout" else ""
    return outcome, f"{type(exc).__name__} from {url}{after}"


def _answered(response, text: str, parse, pool, ticket: dict, url: str, sent: float):
    """A 200 reply: ((text, usage), None) when it holds a message, else (None, the problem).

    JSON without the reply's text raises LMError at once: a bad reply, which another try would repeat.
    """
    status = response.status_code
    try:
        reply, usage = parse(response.json())
        # An empty message is the server's fault, not the conversation's: another try may pass.
        problem = None if reply.strip() else f"{url} answered 200 with an empty message"
    except ValueError:
        problem = f"{url} answered 200 with a body that is not JSON: {text[:120]!r}"
    except LMError:  # JSON without the reply's text: a bad reply, not retried
        pool.release(ticket, "rejected", status=status)
        raise
    if problem:
        pool.release(ticket, "failed", status=status)
        return None, problem
    pool.release(ticket, "ok", status=status, seconds=time.monotonic() - sent,
                 headers=response.headers, used_tokens=usage[0] + usage[1])
    return (reply, usage), None


def _refused(status: int, text: str, pool, ticket: dict, url: str) -> str:
    """Any other status: for 408 and 5xx, the problem (a retry may pass); the rest (404, 400, ...)
    raise LMError at once. A complaint about response_format is never retried: chat steps down a form."""
    retry = status in RETRY_STATUS and "response_format" not in text
    pool.release(ticket, "failed" if retry else "rejected", status=status)
    if not retry:
        raise LMError(f"HTTP {status} from {url}: {text[:200]}")
    return f"HTTP {status} from {url}: {text[:200]}"


def _environment(session, url: str) -> dict:
    """What requests takes from the environment for `url` (proxies, CA bundle, ~/.netrc), read once."""
    if url not in session.environment:
        settings = requests.Session().merge_environment_settings(url, {}, None, None, None)
        settings.pop("stream", None)
        netrc = None if "@" in url.split("//", 1)[-1].split("/", 1)[0] else requests.utils.get_netrc_auth(url)
        session.environment[url] = {**settings, **({"auth": netrc} if netrc else {})}
    return session.environment[url]


def _cap(body: dict) -> int:
    return body.get("max_tokens") or body.get("options", {}).get("num_predict") or 0


def _retry_after(response) -> float | None:
    try:
        return min(60.0, max(0.0, float(response.headers.get("Retry-After", ""))))
    except ValueError:
        return None
