"""The start-up check: every engine answers and serves its model before the output folder is touched.

    engine = check_engine(load_task("task.yaml")["engine"])   # ConfigError: "cannot reach Ollama at ..."

It returns the engine resolved: the model an OpenAI-style server serves when none was named,
the parallel slots llama-server reports (where load control starts), the servers of a fleet
that did not answer (`unreachable`: the others carry the run), the local model's file.
"""

from __future__ import annotations

import requests

from . import chat
from .errors import ConfigError, Unreachable
from .local import check_local
from .urls import endpoint_url, redact_url


def check_engine(engine: dict) -> dict:
    """The engine settings resolved (the served model; the local model's path), checked to work.

    Fails fast, before any work, with a ConfigError naming the fix when the model is missing or
    no server answers. Servers that do not answer while others do are listed in
    `unreachable` (load control probes them during the run). The argument is left as it was.
    """
    engine = dict(engine)
    if engine["type"] == "local":
        return check_local(engine)
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
    tags = _get_json(endpoint_url(url, "/api/tags"), engine,
                     f"cannot reach Ollama at {redact_url(url)}: start it with 'ollama serve' (or use --engine local)")
    names = {m.get("name") for m in tags.get("models", [])} | {m.get("model") for m in tags.get("models", [])}
    model = engine["model"]
    if model not in names and f"{model}:latest" not in names:
        raise ConfigError(f"model '{model}' not found at {redact_url(url)}: run 'ollama pull {model}'")


def _check_openai(url: str, engine: dict) -> str:
    """The model to use at `url`: the one asked for, or without one the first the server lists."""
    models = _get_json(endpoint_url(url, "/v1/models"), engine,
                       f"cannot reach an OpenAI-compatible server at {redact_url(url)}: start it (vLLM, llama-server, ...) "
                       "or pass --base-url", chat.auth_headers(engine))
    url = redact_url(url)  # from here on, only in messages
    served = [m.get("id") for m in models.get("data", []) if isinstance(m, dict)]
    if engine["model"] is None:
        if not served:
            raise ConfigError(f"{endpoint_url(url, '/v1/models')} lists no model: pass --model")
        return served[0]
    if served and engine["model"] not in served:
        raise ConfigError(f"model '{engine['model']}' is not served at {url} (it serves: {', '.join(served[:5])}): pass one of those with --model")
    return engine["model"]


def _served_slots(url: str, engine: dict) -> int | None:
    """The parallel slots llama-server reports at /props (`total_slots`); None where unsaid (vLLM, OpenAI)."""
    try:
        slots = requests.get(endpoint_url(url, "/props"), headers=chat.auth_headers(engine), timeout=min(engine["timeout"], 5)).json()
    except (requests.RequestException, ValueError):
        return None
    slots = slots.get("total_slots") if isinstance(slots, dict) else None
    return slots if isinstance(slots, int) and not isinstance(slots, bool) and slots > 0 else None
