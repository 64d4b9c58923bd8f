"""An OpenAI-compatible chat endpoint on loopback whose answers come from a function.

It stands in for the LLM picker's model (`serve/character/picker.py`) where none can be reached:
in the tests, and in the blind round of the picker (`eval/blind-picker/make.py`), where it first
records the picker's requests for a reader and then gives the reader's answers back. `answer`
takes a request's JSON body and gives (HTTP status, the message content, seconds to wait).
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Answer = tuple[int, str, float]


class ChatApi:
    """`POST /v1/chat/completions` answered by `answer`; every request's headers and body are kept."""

    def __init__(self, answer: Callable[[dict], Answer]) -> None:
        self.requests: list[tuple[dict, dict]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                api.requests.append((dict(self.headers), body))
                status, content, delay = answer(body)
                time.sleep(delay)
                if self.path != "/v1/chat/completions":
                    status, content = 404, f"no route {self.path}"
                message = {"choices": [{"message": {"role": "assistant", "content": content}}]} if status == 200 else {"error": {"message": content}}
                payload = json.dumps(message).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
