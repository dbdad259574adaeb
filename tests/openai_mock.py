"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1 for tests.

Each request takes the next behaviour from a queue, or the default behaviour
when the queue is empty:

``("reply", text)``
    HTTP 200 with a chat completion whose content is ``text``.
``("status", code)``
    An empty JSON error body with that HTTP status.
``("sleep", seconds, text)``
    Wait, then reply with ``text`` (for timeouts and concurrency).
``("raw", body)``
    HTTP 200 with ``body`` bytes as is (malformed replies).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class MockChatServer:
    """Serve scripted chat completions and record every request."""

    def __init__(self, default: tuple = ("reply", "Label: Normal")) -> None:
        self.default = default
        self.behaviours: deque[tuple] = deque()
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def queue(self, *behaviours: tuple) -> None:
        self.behaviours.extend(behaviours)

    def __enter__(self) -> MockChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next(self) -> tuple:
        with self._lock:
            return self.behaviours.popleft() if self.behaviours else self.default

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                with server._lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                behaviour = server._next()
                try:
                    if behaviour[0] == "sleep":
                        time.sleep(behaviour[1])
                        behaviour = ("reply", behaviour[2])
                finally:
                    # Leave the in-flight count before the reply is written: once
                    # the client reads it, its worker may send the next request
                    # before this handler thread runs again.
                    with server._lock:
                        server.in_flight -= 1
                self._respond(behaviour)

            def _respond(self, behaviour: tuple) -> None:
                kind = behaviour[0]
                if kind == "sleep":
                    time.sleep(behaviour[1])
                    behaviour = ("reply", behaviour[2])
                    kind = "reply"
                if kind == "status":
                    self._send(behaviour[1], b"{}")
                elif kind == "raw":
                    self._send(200, behaviour[1])
                else:
                    completion = {
                        "id": "mock",
                        "object": "chat.completion",
                        "choices": [
                            {
                                "index": 0,
                                "message": {
                                    "role": "assistant",
                                    "content": behaviour[1],
                                },
                                "finish_reason": "stop",
                            }
                        ],
                    }
                    self._send(200, json.dumps(completion).encode())

            def _send(self, status: int, body: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    # The client gave up (timeout test); nothing to send to.
                    pass

        return Handler
