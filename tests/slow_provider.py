"""A tiny OpenAI-compatible server whose answers take as long as a test needs (the shared fake
provider answers at once), and which records when each call arrived: for tests that must catch a
worker in the middle of a call (graceful stops, kills). The `slow` fixture is in conftest.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SLOW_POLICIES = """
[[tiers]]
name = "cheap"
candidates = [{{ provider = "slow", model = "slow-model" }}]

[providers.slow]
kind = "openai"
base_url = "{url}"

[prices."slow-model"]
input_per_mtok = "1"
output_per_mtok = "2"

[rules]
premium_tier = "cheap"
long_input_tier = "cheap"
keyword_tier = "cheap"

[rules.classify]
enabled = false

[classifier]
safe_tier = "cheap"
"""


class SlowServer(ThreadingHTTPServer):
    """Chat completions answered after `delay` seconds (changeable while running); `calls` holds the
    arrival time (time.monotonic()) and prompt of every call, answered or not."""

    daemon_threads = True

    def __init__(self, delay: float) -> None:
        super().__init__(("127.0.0.1", 0), _SlowHandler)
        self.delay = delay
        self.calls: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()  # ends every pending sleep at teardown

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def prompts(self) -> list[str]:
        with self.lock:
            return [prompt for _, prompt in self.calls]

    def calls_after(self, moment: float) -> int:
        with self.lock:
            return sum(at > moment for at, _ in self.calls)


class _SlowHandler(BaseHTTPRequestHandler):
    server: SlowServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        with self.server.lock:
            self.server.calls.append((time.monotonic(), prompt))
            delay = self.server.delay
        if self.server.stopping.wait(delay):
            return
        send_chat_answer(self, body["model"], prompt)  # False: the worker gave up on the call (a hand-back)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def send_chat_answer(handler: BaseHTTPRequestHandler, model: str, prompt: str) -> bool:
    """Answer an OpenAI chat call with "answer: <prompt>" (10 tokens in, 5 out); False when the client
    had hung up (a cancelled call)."""
    answer = {
        "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer: {prompt}"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }  # fmt: skip
    data = json.dumps(answer).encode()
    try:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
    except OSError:
        return False
    return True


def serve_slowly() -> Iterator[SlowServer]:
    server = SlowServer(delay=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.stopping.set()
    server.shutdown()
    server.server_close()
