"""Retries and backpressure: the send policy of every real run (plug.make_chat passes it).

The core's chat sends a call once (chat.send_once); `send` here goes on after an attempt that
did not get its reply:

    from chitchat_gen import chat, retry
    from chitchat_gen.ratelimit import make_pool
    ask = chat.make_chat(engine, pool=make_pool(engine), send=retry.send)

- a failure (connection, timeout, 408, 5xx, a 200 that is not JSON or has an empty message) is
  retried with exponential backoff and full jitter (`backoff`), `engine.retries` times, twice that
  while the endpoint answers other calls (`pool.answering`);
- a timeout when no server answers at all (`pool.silent`) raises NoAnswer, and the run stops;
- a busy reply (429, 503, 529) is not a failure: the call waits (`Retry-After`, else a short
  growing backoff) and goes again, for at most `engine.max_wait` seconds of waiting in all (the
  pool's waits for a free endpoint count).

The pool needs `answering` and `silent` besides the core's `acquire` and `release`: ratelimit.Pool.
"""

from __future__ import annotations

import random
import time

from .errors import LMError, NoAnswer
from .urls import redact_url


def send(attempt, engine: dict, pool) -> tuple[str, tuple[int, int, int]]:
    """chat.send_once's contract, with retries and waits: (text, usage), or LMError once the call's
    retries or engine.max_wait are spent."""
    failures, waited, busy = 0, 0.0, 0
    while True:
        tried = attempt(waited)
        waited += tried.waited
        if tried.outcome == "ok":
            return tried.reply
        if tried.outcome == "busy":
            wait = _busy_wait(tried, engine, waited, busy)
            busy += 1
            time.sleep(wait)
            waited += wait
            continue
        if tried.outcome == "timeout" and (verdict := pool.silent()):
            raise NoAnswer(verdict)  # the run stops rather than wait out each call's timeouts
        failures += 1
        # A server that answers other calls meanwhile sends sporadic faults: a call that met a few of
        # them still gets through on more tries, where dropping it would remake its whole conversation.
        sporadic = pool.answering(tried.ticket)
        if failures > engine["retries"] * (2 if sporadic else 1):
            raise LMError(tried.problem)
        time.sleep(backoff(failures, sporadic))


def backoff(failures: int, sporadic: bool) -> float:
    """Seconds before the next attempt of a call that failed `failures` times, with full jitter
    (threads must not retry in lockstep): short for a `sporadic` fault (its endpoint is `answering`), else longer.

    >>> 0 <= backoff(3, sporadic=False) <= 2.0
    True
    """
    base = 0.05 if sporadic else 0.5
    return random.uniform(0, min(8.0, base * 2 ** (failures - 1)))


def _busy_wait(tried, engine: dict, waited: float, busy: int) -> float:
    """Seconds to wait out a busy reply, the `busy`-th of this call: its `Retry-After`, else a short
    growing backoff. LMError when that wait would pass engine.max_wait in all."""
    wait = tried.retry_after if tried.retry_after is not None else random.uniform(0.05, min(4.0, 0.25 * 2 ** busy))
    if waited + wait > engine["max_wait"]:
        status, text = tried.response.status_code, tried.response.text
        raise LMError(f"HTTP {status} from {redact_url(tried.ticket['url'])} for {waited + wait:.0f} s, past "
                      f"engine.max_wait ({engine['max_wait']:g} s): {text[:160]}")
    return wait
