"""Load control: which endpoint gets the next call, and when it may go. No HTTP here.

The core's HTTP chat (chat.py) takes a `pool`: it asks `pool.acquire(tokens)` before each request
and tells `pool.release(ticket, outcome, ...)` how it went; its retries (retry.py) ask `answering`
and `silent`. `Pool` here is the real one (the core's own, chat.RoundRobin, sends each call to the
next URL and keeps no figures). In between, this module keeps for every endpoint (base URL):

- **a limit on calls in flight** (AIMD, as TCP does): halved when the server says "slow down"
  (503, 529; a 429 when BUSY_IN of its last ANSWERS answers were 429s) or a call times out, at
  most once per burst of such answers; then grown by one
  per `limit` successes, slowly near the level where the last "slow down" came. It starts at the
  server's `total_slots` where the server says it (llama-server's `/props`), else at the
  conversations in flight; it never exceeds those.
- **pacing** (token buckets): `max_rpm` / `max_tpm` given by the user; the rate the server states
  in OpenAI's `x-ratelimit-limit-*` headers; or, after 429s in a run without them, the rate that
  was getting through, lowered by a tenth on each later run of 429s and raised again while none comes.
  `Retry-After` pauses the endpoint that sent it.
- **health**: three failures in a row (connection refused, 5xx, timeouts) take an endpoint out of
  rotation for 1 s, then 2, 4 ... 30 s; after that one call probes it, and a success brings it
  back. That is routing around a sick server, so it needs a healthy one to route to: with none
  (one server, or all out), calls go on at the endpoints' limits, so a server that fails some
  calls (a 500, a reset) keeps working at full speed between them, and a dead one fails every
  call (using up their retries) and the run stops after its bounds. A failed call is retried
  soon while its endpoint answers other calls (`answering`), later once it fails them all (retry.backoff).
- **no answer**: an endpoint whose calls time out, with no answer of any kind for two timeouts
  (`engine.timeout`), is not answering; when every endpoint is, `silent` says so and the run stops.

Routing: of the endpoints that may take a call now, the one with the least `(in flight + 1) x
mean latency`: calls flow to where they finish soonest (an endpoint 4x slower gets ~4x fewer).

    >>> pool = Pool(["http://a:8000", "http://b:8000"], concurrency=64)
    >>> ticket = pool.acquire(tokens=700)      # blocks until a call may go
    >>> ticket["url"]                          # POST there, then say how it went
    'http://a:8000'
    >>> pool.release(ticket, "ok", seconds=0.4, used_tokens=612)
    >>> pool.describe()
    'a:8000 1 requests 0 busy limit 64 0.40s; b:8000 0 requests 0 busy limit 64 0.00s'
"""

from __future__ import annotations

import collections
import re
import threading
import time
from typing import TypedDict

from .chat import BUSY_STATUS
from .urls import redact_url

OUTCOMES = ("ok", "busy", "timeout", "failed", "refused", "rejected")  # rejected: the request was refused (4xx)
SLOW_PROBE = 20  # successes per unit of limit before probing above the level of the last "slow down"
# A 429 is acted on (the limit halved, a pace learned) when at least BUSY_IN of the endpoint's
# last ANSWERS answers were 429s: a rate limit answers so in runs, while a gateway's sporadic 429
# (one call in ten, at any pace) would otherwise hold the limit at 1 (docs/performance.md,
# "Sporadic 429s"). A 503 or 529 (a full queue) is acted on at once.
ANSWERS, BUSY_IN = 20, 4
LONG_WAIT = 10.0  # seconds a call in flight has waited before the progress line shows it (and the timeout)



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


def make_pool(engine: dict) -> Pool:
    """The load control of an HTTP engine's endpoints (`engine` as chat.check_engine returns it)."""
    return Pool(engine["base_urls"], concurrency=concurrency_of(engine), slots=engine.get("slots"),
                max_rpm=engine["max_rpm"], max_tpm=engine["max_tpm"], timeout=engine["timeout"])


class Pool:
    """The endpoints of one engine and what load control knows of each (the chat's `pool`)."""

    def __init__(self, urls: list[str], *, concurrency: int, slots: dict | None = None,
                 max_rpm: float | None = None, max_tpm: float | None = None, timeout: float = 120.0):
        """Endpoints for `urls`; `slots` maps a URL to the parallel slots its server reported;
        `timeout` is the seconds a request may take (engine.timeout), for `silent`."""
        self.lock, self.timeout = threading.Condition(), timeout
        self.endpoints = [_endpoint(url, concurrency, (slots or {}).get(url), max_rpm, max_tpm) for url in urls]

    def acquire(self, tokens: float = 0.0, timeout: float = float("inf")) -> dict | None:
        """Wait until some endpoint may take a call of about `tokens` tokens; return the call's ticket.

        The ticket ({"endpoint", "url", "epoch", "tokens"}) goes back to `release` when the call ends.
        None when no endpoint could take it within `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                now = time.monotonic()
                up = [e for e in self.endpoints if e["down_until"] <= now]
                # subtle: with every endpoint out, calls go on (to the one due back first) and fail there,
                # so a dead fleet stops the run through the retries instead of hanging it.
                candidates = up or [min(self.endpoints, key=lambda e: e["down_until"])]
                # One probe at a time only while a healthy endpoint carries the other calls.
                probing = any(not e["cooldown"] for e in up)
                waits = [_wait(e, tokens, now, probing) for e in candidates]
                ready = [e for e, wait in zip(candidates, waits) if wait <= 0]
                if ready:
                    known = [e["latency"] for e in self.endpoints if e["latency"] is not None]
                    typical = sum(known) / len(known) if known else 1.0  # an endpoint not yet measured
                    # Ties (equal cost) go to the endpoint with fewer calls so far: each one gets measured.
                    chosen = min(ready, key=lambda e: ((e["in_flight"] + 1) * (e["latency"] or typical), e["calls"]))
                    chosen["in_flight"] += 1
                    chosen["calls"] += 1
                    if chosen["answered_at"] is None:
                        chosen["answered_at"] = now
                    for bucket, amount in ((chosen["requests"], 1), (chosen["tokens"], tokens)):
                        bucket["level"] -= amount if bucket["rate"] else 0
                    ticket = {"endpoint": chosen, "url": chosen["url"], "epoch": chosen["epoch"], "tokens": tokens}
                    chosen["sent"][id(ticket)] = now
                    return ticket
                if now >= deadline:
                    return None
                # Wake when a pause ends or a bucket refills, or earlier when a release frees a place.
                self.lock.wait(timeout=min(min(waits), 1.0, deadline - now))

    def release(self, ticket: dict, outcome: str, *, seconds: float = 0.0, status: int | None = None,
                retry_after: float | None = None, headers=None, used_tokens: float | None = None) -> None:
        """Record how a call ended: `outcome` is one of OUTCOMES; `status` the HTTP status if any."""
        e = ticket["endpoint"]
        with self.lock:
            now = time.monotonic()
            e["in_flight"] -= 1
            e["sent"].pop(id(ticket), None)
            e["answers"][status or outcome] += 1
            if used_tokens is not None and e["tokens"]["rate"]:
                e["tokens"]["level"] += ticket["tokens"] - used_tokens  # the estimate, corrected by the reply's usage
            _read_rate_headers(e, headers or {}, now)
            if status is not None:  # any answer, even an error, shows the server is there
                e["timeouts"], e["answered_at"] = 0, now
                e["recent"].append(status == 429)
            elif outcome == "timeout":
                e["timeouts"] += 1
            congested = outcome == "busy" and (status != 429 or sum(e["recent"]) >= BUSY_IN)
            if outcome == "ok":
                e["failures"], e["cooldown"] = 0, 0.0
                e["seconds"] += seconds
                e["latency"] = seconds if e["latency"] is None else 0.8 * e["latency"] + 0.2 * seconds
                e["successes"].append(now)
                while e["successes"][0] < now - 1.0:
                    e["successes"].popleft()
                _grow(e)
            if (congested or outcome == "timeout") and ticket["epoch"] == e["epoch"]:
                # subtle: the other answers of the same burst were sent before this cut; they must not cut again.
                e["ceiling"], e["limit"], e["epoch"] = e["limit"], max(1.0, e["limit"] / 2), e["epoch"] + 1
            if status == 429 and congested:
                _slow_pace(e, now, retry_after)
            elif retry_after:
                e["pause_until"] = max(e["pause_until"], now + retry_after)
            if outcome in ("failed", "timeout", "refused"):
                e["failures"] += 1
                if e["failures"] >= 3 or outcome == "refused":
                    e["cooldown"] = min(30.0, max(1.0, 2 * e["cooldown"]))
                    e["down_until"] = now + e["cooldown"]
            self.lock.notify_all()

    def answering(self, ticket: dict) -> bool:
        """Whether the call's endpoint answered another call well in the last second: then a 500 or a
        reset is a sporadic fault, likely to pass on the next try, not a server down or restarting."""
        with self.lock:
            successes = ticket["endpoint"]["successes"]
            return bool(successes) and successes[-1] >= time.monotonic() - 1.0

    def silent(self) -> str | None:
        """What to say when no endpoint answers: each timing out, with no answer for two timeouts; else None."""
        with self.lock:
            now, limit = time.monotonic(), self.timeout
            if not all(e["timeouts"] >= 2 and now - e["answered_at"] >= 2 * limit for e in self.endpoints):
                return None
            timeouts = sum(e["timeouts"] for e in self.endpoints)
            quiet = min(now - e["answered_at"] for e in self.endpoints)
            urls = ", ".join(redact_url(e["url"]) for e in self.endpoints)
        return (f"{timeouts} calls to {urls} timed out after {limit:g} s each, and nothing answered for {quiet:.0f} s: "
                f"the server takes calls but does not answer them; if it is only slow, raise --timeout "
                f"(engine.timeout, now {limit:g} s)")

    def report(self) -> list[dict]:
        """Per endpoint: url (credentials masked: the rows are printed and logged), calls, answers by
        status, busy (429/503/529 answers), limit, mean latency, down, timeouts since the last answer,
        the timeout, and how long the oldest call in flight has waited."""
        with self.lock:
            now = time.monotonic()
            return [{"url": redact_url(e["url"]), "calls": e["calls"], "answers": dict(e["answers"]),
                     "busy": sum(n for status, n in e["answers"].items() if status in BUSY_STATUS),
                     "limit": int(e["limit"]), "pace_rpm": round(e["requests"]["rate"] * 60) if e["requests"]["rate"] else None,
                     "latency": round(e["seconds"] / max(1, e["answers"][200] + e["answers"]["ok"]), 3),
                     "down": e["down_until"] > now, "timeouts": e["timeouts"], "timeout": self.timeout,
                     "waiting": round(now - min(e["sent"].values()), 1) if e["sent"] else 0.0}
                    for e in self.endpoints]

    def describe(self) -> str:
        return describe(self.report())


class Endpoint(TypedDict):
    """What load control knows of one base URL (the pool's lock guards every field)."""

    url: str
    limit: float  # calls in flight allowed now (AIMD)
    max_limit: int  # never above: the conversations in flight
    ceiling: float | None  # the limit at the last "slow down": growth slows near it
    epoch: int  # bumped at each cut, so one burst of "slow down" answers cuts once
    in_flight: int
    calls: int  # HTTP attempts sent
    answers: collections.Counter  # by HTTP status, or by outcome where there was none
    seconds: float  # summed latency of the successes
    latency: float | None  # moving mean of a success's seconds, for routing
    failures: int  # in a row: three take the endpoint out
    down_until: float  # out of rotation until then (time.monotonic)
    cooldown: float  # the last time out's length; 0 when healthy
    pause_until: float  # Retry-After, or a stated rate limit's reset
    timeouts: int  # since the last answer of any kind
    answered_at: float | None  # when that answer came (or the first call went)
    sent: dict  # id(ticket) -> when that call went, for the progress line's longest wait
    requests: dict  # token bucket of requests per second
    tokens: dict  # token bucket of LM tokens per second
    rate_cap: float | None  # requests per second never exceeded: max_rpm, or a stated limit
    adaptive: bool  # the request pace was learned from 429s
    rate_ceiling: float | None  # the pace at the last 429
    cut_at: float  # when the pace was last cut (one cut per second)
    stated_requests: float | None  # the rates the server's x-ratelimit-limit-* headers state
    stated_tokens: float | None
    successes: collections.deque  # when the last second's successes came
    recent: collections.deque  # of the last ANSWERS answers, whether each was a 429


def _endpoint(url: str, concurrency: int, slots: int | None, max_rpm, max_tpm) -> Endpoint:
    start = min(slots, concurrency) if slots else concurrency
    rate = max_rpm / 60 if max_rpm else None
    return Endpoint(url=url, limit=float(start), max_limit=concurrency, ceiling=None, epoch=0, in_flight=0, calls=0,
                    answers=collections.Counter(), seconds=0.0, latency=None, failures=0, down_until=0.0,
                    cooldown=0.0, pause_until=0.0, timeouts=0, answered_at=None, sent={}, requests=_bucket(rate),
                    tokens=_bucket(max_tpm / 60 if max_tpm else None), rate_cap=rate, adaptive=False,
                    rate_ceiling=None, cut_at=0.0, stated_requests=None, stated_tokens=None,
                    successes=collections.deque(), recent=collections.deque(maxlen=ANSWERS))


def _bucket(rate: float | None) -> dict:
    """A token bucket: `rate` per second (None: unlimited), holding at most one second's worth."""
    return {"rate": rate, "level": rate or 0.0, "at": time.monotonic()}


def _refill(bucket: dict, now: float) -> None:
    if bucket["rate"]:
        bucket["level"] = min(max(bucket["rate"], 1.0), bucket["level"] + (now - bucket["at"]) * bucket["rate"])
    bucket["at"] = now


def _ready_in(bucket: dict, need: float) -> float:
    """Seconds until the bucket holds `need` (capped at one second's worth, so any need is met)."""
    if not bucket["rate"]:
        return 0.0
    need = min(need, max(bucket["rate"], 1.0))
    return max(0.0, (need - bucket["level"]) / bucket["rate"])


def _wait(e: dict, tokens: float, now: float, probing: bool = True) -> float:
    """Seconds before endpoint `e` may take a call (inf: when a call in flight there ends)."""
    _refill(e["requests"], now)
    _refill(e["tokens"], now)
    # An endpoint back from being out takes one call (the probe) until a call there succeeds.
    full = e["in_flight"] >= (1 if e["cooldown"] and probing else max(1, int(e["limit"])))
    return max(e["pause_until"] - now, _ready_in(e["requests"], 1.0), _ready_in(e["tokens"], tokens),
               float("inf") if full else 0.0)


def _grow(e: dict) -> None:
    """Additive increase: +1 per `limit` successes; SLOW_PROBE times slower at the last "slow down" level."""
    step = 1 / e["limit"]
    if e["ceiling"] is not None and e["limit"] + 1 > e["ceiling"]:
        step /= SLOW_PROBE
    e["limit"] = min(float(e["max_limit"]), e["limit"] + step)
    if e["ceiling"] is not None and e["limit"] >= e["ceiling"] + 1:
        e["ceiling"] = None  # calls went past the old level without complaint: it no longer holds
    pace = e["requests"]
    if e["adaptive"]:  # a pace learned from 429s: probe upwards the same way, +2/s per second of successes
        step = 2 / pace["rate"]
        if e["rate_ceiling"] is not None and pace["rate"] + 2 > e["rate_ceiling"]:
            step /= SLOW_PROBE
        pace["rate"] = min(e["rate_cap"] or float("inf"), pace["rate"] + step)
        if e["rate_ceiling"] is not None and pace["rate"] >= e["rate_ceiling"] + 2:
            e["rate_ceiling"] = None


def _slow_pace(e: dict, now: float, retry_after: float | None) -> None:
    """A 429: pace the endpoint at the rate that was getting through, or a tenth below its pace."""
    pace = e["requests"]
    if now - e["cut_at"] < 1.0:
        return  # one cut per second: a burst of 429s is one signal
    e["cut_at"], e["adaptive"] = now, True
    if pace["rate"] is None:
        # No pace yet: the successes of the last second are what the server lets through; and the
        # burst that found the limit must age out before the pace can hold, so honour Retry-After.
        pace.update(rate=max(1.0, float(len(e["successes"]))), level=0.0, at=now)
        e["pause_until"] = max(e["pause_until"], now + (retry_after or 1.0))
    else:
        e["rate_ceiling"], pace["rate"] = pace["rate"], max(0.1, pace["rate"] * 0.9)


RATE_HEADERS = {"requests": ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
                "tokens": ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")}


def _read_rate_headers(e: dict, headers, now: float) -> None:
    """OpenAI's x-ratelimit-* headers: pace at the stated per-minute limit; wait for the reset at zero."""
    for key, (limit, remaining, reset) in RATE_HEADERS.items():
        try:
            stated = float(headers[limit]) / 60
        except (KeyError, ValueError):
            continue
        if e[f"stated_{key}"] != stated:  # a new statement: adopt it (within the user's own limit)
            e[f"stated_{key}"] = stated
            cap = min(stated, e["rate_cap"] or stated) if key == "requests" else stated
            e[key].update(rate=cap, level=0.0, at=now)
            if key == "requests":
                e["rate_cap"] = cap
        if headers.get(remaining) == "0":
            e["pause_until"] = max(e["pause_until"], now + parse_duration(headers.get(reset, "")))


def parse_duration(text: str) -> float:
    """Seconds in OpenAI's reset durations: "1s", "250ms", "6m0s", "1h2m3.5s" (0.0 if unreadable).

    >>> parse_duration("6m0s"), parse_duration("250ms"), parse_duration("1.5s")
    (360.0, 0.25, 1.5)
    """
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(number) * units[unit] for number, unit in re.findall(r"([\d.]+)(ms|h|m|s)", text))


def describe(rows: list[dict]) -> str:
    """`report` rows in one line: "a:8000 612 requests 3 busy limit 12 0.41s; b:8000 ...".

    A server's requests are HTTP attempts: a call retried or sent again after a 429 is several.
    """
    return "; ".join(f"{re.sub(r'^https?://', '', r['url'])} {r['calls']} requests {r['busy']} busy limit {r['limit']}"
                     + (f" pace {r['pace_rpm']}/min" if r["pace_rpm"] else "") + f" {r['latency']:.2f}s"
                     + (" DOWN" if r["down"] else "")
                     + (f" longest wait {r['waiting']:.0f}s of {r['timeout']:g}s" if r["waiting"] >= LONG_WAIT else "")
                     + (f" NOT ANSWERING ({r['timeouts']} timed out after {r['timeout']:g}s)" if r["timeouts"] else "")
                     for r in rows)
