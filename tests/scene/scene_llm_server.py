"""A real OpenAI-compatible chat server for tests: http.server in a thread on 127.0.0.1, port 0.

Each POST to /v1/chat/completions takes the next scripted answer (a function of the request JSON returning
(status, body, delay seconds)); the last answer repeats. Requests are recorded for the tests to inspect.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Answer = Callable[[dict], tuple[int, bytes, float]]


def completion(content: str, finish_reason: str = "stop") -> bytes:
    """A chat.completion body with one choice."""
    return json.dumps(
        {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": "test-model",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    ).encode()


def reply(content: str, status: int = 200, delay: float = 0.0, finish_reason: str = "stop") -> Answer:
    return lambda request: (status, completion(content, finish_reason) if status == 200 else b'{"error": "x"}', delay)


def raw(body: bytes, status: int = 200, delay: float = 0.0) -> Answer:
    return lambda request: (status, body, delay)


class ChatServer:
    """`with ChatServer([answer, ...]) as server: server.url` -> http://127.0.0.1:PORT/v1."""

    def __init__(self, answers: list[Answer]) -> None:
        self.answers = list(answers)
        self.requests: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", 0))
                request = json.loads(self.rfile.read(length) or b"{}")
                owner.requests.append({"path": self.path, "body": request, "auth": self.headers.get("Authorization")})
                answer = owner.answers.pop(0) if len(owner.answers) > 1 else owner.answers[0]
                status, body, delay = answer(request)
                time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
