"""A stand-in LM for tests and benchmarks: a canned reply function, and a real HTTP server
(stdlib, threaded, on 127.0.0.1) that speaks Ollama's and OpenAI's chat APIs with it.

    with FakeServer(models=["granite4:3b"], latency=0.01, slots=2) as server:
        ...  # point the engine at server.url; server.requests holds (path, body) pairs
    server.received                              # [("/v1/models?api_key=k", "Basic YWxp..."), ...]

Faults are queued per call: server.faults.extend(["500", "reset", "429", "garbage", "hang", "empty"]);
"echo" answers 400 with the request's Authorization header in the body, as careless gateways do;
"empty" answers 200 with an empty message. Or drawn at random, or for every call:

    FakeServer(fault_share=0.3, fault_kinds=("500", "reset"))   # 30 % of chat calls fail, seeded
    FakeServer(hang=True)                        # accepts every chat call and never answers it

Backpressure as real servers apply it (hosted APIs: 429 with Retry-After and x-ratelimit-* headers;
Ollama: 503 when its queue is full; llama-server: a queue beyond its slots); server.answered counts
the status codes sent on the chat endpoints:

    FakeServer(rate=40, ratelimit_headers=True)  # hosted API: 429 + Retry-After beyond 40 requests/s
    FakeServer(slots=1, queue=2)                 # Ollama with OLLAMA_MAX_QUEUE=2: 503 beyond 1 + 2
    FakeServer(slots=64, props=True)             # llama-server: GET /props -> {"total_slots": 64}
    server.answered                              # Counter({200: 812, 429: 40})

A prefix cache as vLLM keeps one (ENGINE-FACTS.md, "Prefix caching"), over the messages in blocks
of 64 characters (a block is served from cache when it and every block before it were sent
before); usage is then counted at 4 characters a token and reports the cached part, as each
server does: OpenAI/vLLM `usage.prompt_tokens_details.cached_tokens`, llama-server
`timings.cache_n` (cached="llama-server"), Ollama a `prompt_eval_count` of the uncached part only:

    FakeServer(prefix_cache=True)                # server.cache_log: [{"messages", "schema", "chars", "cached"}]
    FakeServer(prefix_cache=True, cached="llama-server")
"""

from __future__ import annotations

import collections
import itertools
import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COUNTER = itertools.count(1)
CHAT_PATHS = ("/api/chat", "/v1/chat/completions")
# Ollama's own wording (server/sched.go, ErrMaxQueue), two spaces included: clients may match on it.
OLLAMA_BUSY = {"error": "server busy, please try again.  maximum pending requests exceeded"}
BLOCK = 64  # characters per block of the prefix cache (vLLM's blocks are 16 tokens, ~64 characters)
CHARS_PER_TOKEN = 4


def prompt_text(messages: list[dict]) -> str:
    """The prompt as a server's chat template lays it out, near enough."""
    return "".join(f"<|{m.get('role')}|>\n{m.get('content')}\n" for m in messages)


def canned_reply(messages: list[dict], json_schema: dict | None = None) -> str:
    """A plausible reply for each of the pipeline's prompts, distinct on every call."""
    k = next(COUNTER)
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    last = messages[-1]["content"]
    if json_schema is not None and "coherence" in json_schema["properties"]:
        return json.dumps({"coherence": 4, "persona": 4, "naturalness": 3, "closing": 5, "reason": f"fine {k}"})
    if json_schema is not None:
        names = json_schema["properties"]["eligible"]["items"]["enum"]
        return json.dumps({"eligible": names, "reasoning": "any of these fits"})
    if "short scenarios" in system:
        return f"Scenario: A person number {k} wants to chat about hobby {k}."
    if "one-sentence instruction" in last:
        return f"Ask about detail {k}."
    if "role-playing a human user" in system and "This is your last message" in last:
        return f"User: Thanks a lot for chat {k}, bye!"
    if "role-playing a human user" in system:
        return f"User: I wonder about thing {k}, can you tell me more?"
    return f"Here is a friendly answer number {k}."


def fake_chat(messages, json_schema=None, **options) -> str:
    return canned_reply(messages, json_schema)


class FakeServer:
    def __init__(self, models=("granite4:3b",), latency: float = 0.0, slots: int | None = None,
                 reply=canned_reply, json_forms=("json_schema", "json_object"), port: int = 0,
                 rate: float | None = None, ratelimit_headers: bool = False, queue: int | None = None,
                 props: bool = False, prefix_cache: bool = False, cached: str = "openai",
                 fault_share: float = 0.0, fault_kinds=("500", "reset"), fault_seed: int = 1, hang: bool = False):
        if queue is not None and not slots:
            raise ValueError("queue=Q bounds the requests waiting for slots: give slots=S too")
        if ratelimit_headers and not rate:
            raise ValueError("ratelimit_headers=True reports the rate limit: give rate=R too")
        self.models, self.latency, self.reply = list(models), latency, reply
        self.json_forms = json_forms  # the OpenAI response_format types this server accepts
        self.slots = threading.Semaphore(slots) if slots else None
        self.total_slots = slots or 1  # what GET /props reports (llama-server without -np has 1 slot)
        self.queue, self.props = queue, props
        self.admitted = 0  # chat requests running or waiting for a slot, bounded by slots + queue
        # Rate limit: a token bucket of capacity R refilled at R per second (a request that finds it
        # below 1 token gets 429 and takes none), so a burst of R passes at once, then R/s on average.
        self.rate, self.ratelimit_headers = rate, ratelimit_headers
        self.tokens, self.refilled = float(rate or 0), time.monotonic()
        self.answered: collections.Counter = collections.Counter()  # chat endpoints: status -> replies
        self.requests: list[tuple[str, dict]] = []  # the path without its query
        self.received: list[tuple[str, str | None]] = []  # (path with query, Authorization header)
        self.faults: list[str] = []
        self.faulted: collections.Counter = collections.Counter()  # fault kind -> chat calls it met
        self.fault_share, self.fault_kinds, self.fault_rng = fault_share, list(fault_kinds), random.Random(fault_seed)
        self.hang, self.closed = hang, threading.Event()  # hang: chat calls wait for the server's end
        self.prefix_cache, self.cached_style = prefix_cache, cached
        self.blocks: set = set()  # the prefix cache: a key per block, naming the block and all before it
        self.cache_log: list[dict] = []
        self.finish = "stop"  # "length": replies say they hit the token cap
        self.lock = threading.Lock()
        self.connections: set = set()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # clients we kill on purpose break pipes
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.closed.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        for connection in list(self.connections):  # a dead server also drops its kept-alive connections
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def chat_requests(self) -> list[dict]:
        return [body for path, body in self.requests if path.endswith(("/api/chat", "/chat/completions"))]

    def _cache(self, messages: list[dict], schema) -> tuple[int, int]:
        """(prompt characters, characters served from the prefix cache) of one call; caches its blocks."""
        text, key, cached = prompt_text(messages), None, 0
        with self.lock:
            for start in range(0, len(text) - BLOCK + 1, BLOCK):
                key = hash((key, text[start:start + BLOCK]))
                if key in self.blocks and cached == start:
                    cached += BLOCK
                self.blocks.add(key)
            self.cache_log.append({"messages": messages, "schema": schema, "chars": len(text), "cached": cached})
        return len(text), cached

    def _usage(self, route: str, messages: list[dict], schema, text: str) -> dict:
        """The reply's token counts, as the server this route and `cached` stand for reports them."""
        if not self.prefix_cache:
            return {"prompt_eval_count": 10, "eval_count": 5} if route == "/api/chat" else \
                {"usage": {"prompt_tokens": 10, "completion_tokens": 5}}
        chars, cached = self._cache(messages, schema)
        prompt, hits, completion = chars // CHARS_PER_TOKEN, cached // CHARS_PER_TOKEN, len(text) // CHARS_PER_TOKEN + 1
        if route == "/api/chat":  # Ollama counts the prompt tokens it evaluated, cache hits left out
            return {"prompt_eval_count": prompt - hits, "eval_count": completion}
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        if self.cached_style == "llama-server":
            return {"usage": usage, "timings": {"cache_n": hits, "prompt_n": prompt - hits, "predicted_n": completion}}
        return {"usage": {**usage, "prompt_tokens_details": {"cached_tokens": hits}}}

    def _take_token(self) -> tuple[bool, dict]:
        """Spend one token of the rate limit if there is one: (allowed, headers for the reply)."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.rate, self.tokens + (now - self.refilled) * self.rate)
            self.refilled = now
            allowed = self.tokens >= 1
            if allowed:
                self.tokens -= 1
            tokens = self.tokens
        return allowed, self._ratelimit_headers(tokens)

    def _ratelimit_headers(self, tokens: float) -> dict:
        """OpenAI's x-ratelimit-* headers. OpenAI states request limits per minute and enforces them
        over shorter periods, so our R per second is reported as R x 60 per minute, the bucket's fill
        scaled the same way, and the reset as the time until the bucket is full again."""
        if not self.ratelimit_headers:
            return {}
        return {"x-ratelimit-limit-requests": str(int(self.rate * 60)),
                "x-ratelimit-remaining-requests": str(max(0, int(tokens * 60))),
                "x-ratelimit-reset-requests": _duration((self.rate - tokens) / self.rate)}

    def _handler(server):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real LM servers do
            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                # Headers and body go out in separate writes: without NODELAY, Nagle's algorithm and
                # delayed ACKs stall each kept-alive reply by up to 40 ms (real servers set it too).
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                server.connections.add(self.connection)

            def finish(self):
                super().finish()
                server.connections.discard(self.connection)

            def _send(self, status: int, payload, headers=None):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
                if self.route in CHAT_PATHS:
                    with server.lock:
                        server.answered[status] += 1

            def _receive(self, body: dict) -> None:
                self.route = self.path.split("?")[0]
                with server.lock:
                    server.requests.append((self.route, body))
                    server.received.append((self.path, self.headers.get("Authorization")))

            def do_GET(self):
                self._receive({})
                if self.route == "/api/tags":
                    self._send(200, {"models": [{"name": m, "model": m} for m in server.models]})
                elif self.route == "/props" and server.props:
                    self._send(200, {"total_slots": server.total_slots})
                elif self.route == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in server.models]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                self._receive(body)
                with server.lock:
                    fault = server.faults.pop(0) if server.faults else None
                    if fault is None and server.fault_share and self.route in CHAT_PATHS \
                            and server.fault_rng.random() < server.fault_share:
                        fault = server.fault_rng.choice(server.fault_kinds)
                    if server.hang and self.route in CHAT_PATHS:
                        fault = "hang"
                    if fault:
                        server.faulted[fault] += 1
                if fault in ("reset", "hang", "truncated"):
                    self.close_connection = True  # this connection ends with the fault
                if fault == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.connection.close()
                    return
                if fault == "truncated":  # headers promise more body than is sent, then the socket closes
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b'{"message": {"con')
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault == "hang":
                    server.closed.wait(None if server.hang else 3)
                    return
                if fault in ("500", "503", "429"):
                    self._send(int(fault), {"error": f"fake {fault}"}, {"Retry-After": "0"} if fault == "429" else None)
                    return
                if fault == "echo":
                    self._send(400, {"error": f"bad request with Authorization: {self.headers.get('Authorization')}"})
                    return
                if fault == "garbage":
                    self._send(200, b"<html>not json")
                    return
                if body.get("model") not in server.models:
                    self._send(404, {"error": f"model \"{body.get('model')}\" not found, try pulling it first"})
                    return
                schema = body.get("format")
                form = body.get("response_format")
                if self.route == "/v1/chat/completions" and form:
                    if form["type"] not in server.json_forms:  # worded as llama-cpp-python's server words it
                        self._send(500, {"error": {"message": f"body.response_format.type: Input should be "
                                                              f"{' or '.join(server.json_forms)}"}})
                        return
                    schema = form["json_schema"]["schema"] if form["type"] == "json_schema" else form["schema"]
                if self.route not in CHAT_PATHS:
                    self._send(404, {"error": "not found"})
                    return
                headers = {}
                if server.rate:  # a hosted API's gateway refuses before the model sees the request
                    allowed, headers = server._take_token()
                    if not allowed:
                        self._send(429, {"error": {
                            "message": f"Rate limit reached for requests on {body['model']}: limit "
                                       f"{int(server.rate * 60)} / min. Please try again in 1s.",
                            "type": "requests", "param": None, "code": "rate_limit_exceeded"}},
                            {"Retry-After": "1", **headers})
                        return
                if server.queue is not None:  # Ollama refuses at once when its pending queue is full
                    with server.lock:
                        full = server.admitted >= server.total_slots + server.queue
                        if not full:
                            server.admitted += 1
                    if full:
                        self._send(503, OLLAMA_BUSY)
                        return
                if server.slots:
                    server.slots.acquire()
                try:
                    time.sleep(server.latency)
                    text = server.reply(body["messages"], schema)
                finally:
                    if server.slots:
                        server.slots.release()
                    if server.queue is not None:
                        with server.lock:
                            server.admitted -= 1
                if fault == "empty":
                    text = ""
                usage = server._usage(self.route, body["messages"], schema, text)
                if self.route == "/api/chat":
                    self._send(200, {"model": body["model"], "message": {"role": "assistant", "content": text},
                                     "done": True, "done_reason": server.finish, **usage})
                else:
                    self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                  "finish_reason": server.finish}], **usage}, headers)

        return Handler


def _duration(seconds: float) -> str:
    """OpenAI's way of writing a reset time: "1s", "250ms"."""
    return f"{seconds:g}s" if seconds >= 1 else f"{round(seconds * 1000)}ms"
