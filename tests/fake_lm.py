"""A stand-in LM for tests and benchmarks: a canned reply function, and a real HTTP server
(stdlib, threaded, on 127.0.0.1) that speaks Ollama's and OpenAI's chat APIs with it.

    with FakeServer(models=["granite4:3b"], latency=0.01, slots=2) as server:
        ...  # point the engine at server.url; server.requests holds (path, body) pairs

Faults are queued per call: server.faults.extend(["500", "reset", "429", "garbage", "hang"]).
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COUNTER = itertools.count(1)


def canned_reply(messages: list[dict], json_schema: dict | None = None) -> str:
    """A plausible reply for each of the pipeline's prompts, distinct on every call."""
    k = next(COUNTER)
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    last = messages[-1]["content"]
    if json_schema is not None:
        names = json_schema["properties"]["eligible"]["items"]["enum"]
        return json.dumps({"eligible": names, "reasoning": "any of these fits"})
    if "short scenarios" in system:
        return f"Scenario: A person number {k} wants to chat about hobby {k}."
    if "one-sentence instruction" in last:
        return f"Ask about detail {k}."
    if "role-playing a human user" in system:
        return f"User: I wonder about thing {k}, can you tell me more?"
    return f"Here is a friendly answer number {k}."


def fake_chat(messages, json_schema=None, **options) -> str:
    return canned_reply(messages, json_schema)


class FakeServer:
    def __init__(self, models=("granite4:3b",), latency: float = 0.0, slots: int | None = None,
                 reply=canned_reply, json_forms=("json_schema", "json_object"), port: int = 0):
        self.models, self.latency, self.reply = list(models), latency, reply
        self.json_forms = json_forms  # the OpenAI response_format types this server accepts
        self.slots = threading.Semaphore(slots) if slots else None
        self.requests: list[tuple[str, dict]] = []
        self.faults: list[str] = []
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
        self.httpd.shutdown()
        self.httpd.server_close()
        for connection in list(self.connections):  # a dead server also drops its kept-alive connections
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def chat_requests(self) -> list[dict]:
        return [body for path, body in self.requests if path.endswith(("/api/chat", "/chat/completions"))]

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

            def do_GET(self):
                with server.lock:
                    server.requests.append((self.path, {}))
                if self.path == "/api/tags":
                    self._send(200, {"models": [{"name": m, "model": m} for m in server.models]})
                elif self.path == "/api/version":
                    self._send(200, {"version": "0.0-fake"})
                elif self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in server.models]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server.lock:
                    server.requests.append((self.path, body))
                    fault = server.faults.pop(0) if server.faults else None
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
                    time.sleep(3)
                    return
                if fault in ("500", "503", "429"):
                    self._send(int(fault), {"error": f"fake {fault}"}, {"Retry-After": "0"} if fault == "429" else None)
                    return
                if fault == "garbage":
                    self._send(200, b"<html>not json")
                    return
                if self.path == "/api/show":
                    found = body.get("model") in server.models
                    self._send(200 if found else 404, {"details": {}} if found else {"error": "not found"})
                    return
                if body.get("model") not in server.models:
                    self._send(404, {"error": f"model \"{body.get('model')}\" not found, try pulling it first"})
                    return
                schema = body.get("format")
                form = body.get("response_format")
                if self.path == "/v1/chat/completions" and form:
                    if form["type"] not in server.json_forms:  # worded as llama-cpp-python's server words it
                        self._send(500, {"error": {"message": f"body.response_format.type: Input should be "
                                                              f"{' or '.join(server.json_forms)}"}})
                        return
                    schema = form["json_schema"]["schema"] if form["type"] == "json_schema" else form["schema"]
                if server.slots:
                    server.slots.acquire()
                try:
                    time.sleep(server.latency)
                    text = server.reply(body["messages"], schema)
                finally:
                    if server.slots:
                        server.slots.release()
                if self.path == "/api/chat":
                    self._send(200, {"model": body["model"], "message": {"role": "assistant", "content": text},
                                     "done": True, "done_reason": server.finish, "prompt_eval_count": 10, "eval_count": 5})
                elif self.path == "/v1/chat/completions":
                    self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                  "finish_reason": server.finish}],
                                     "usage": {"prompt_tokens": 10, "completion_tokens": 5}})
                else:
                    self._send(404, {"error": "not found"})

        return Handler
