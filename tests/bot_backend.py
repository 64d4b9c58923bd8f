"""A real HTTP server on loopback that speaks the bot ↔ backend contract, for the bot's tests.

Tests queue the answers it gives and read back every request it received. Like the backend, it
keeps each committed reply under its Idempotency-Key and answers a repeated key with it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

DEFAULT_REPLY = "Could I BE any more tested?"
USAGE = {"prompt_tokens": 10, "completion_tokens": 5}


@dataclass
class Answer:
    status: int = 200
    body: Any = None  # JSON body (for a stream: the reply it commits); None means the contract's default
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering
    events: list[tuple[float, Any]] | None = None  # a stream: (seconds to wait, event), sent as SSE
    done: bool = True  # end the stream with data: [DONE]; False cuts the connection after the events
    commit: bool = True  # the reply is committed under the Idempotency-Key as the answer starts


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    json: Any
    at: float


def final(text: str, source: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"reply": text, "usage": USAGE, "source": source or {"kind": "generated"}}


def streamed(text: str, pieces: int = 4, every: float = 0.0, source: dict[str, Any] | None = None) -> Answer:
    """The reply as `pieces` deltas `every` seconds apart, then the whole reply and [DONE]."""
    words = text.split(" ")
    size = -(-len(words) // pieces)
    deltas = [" ".join(words[i : i + size]) + (" " if i + size < len(words) else "") for i in range(0, len(words), size)]
    return Answer(events=[(every, {"delta": d}) for d in deltas] + [(0.0, final(text, source))])


class ContractBackend:
    def __init__(self) -> None:
        self.answers: deque[Answer] = deque()
        self.received: list[Received] = []
        self.committed: dict[str, dict[str, Any]] = {}  # Idempotency-Key → the reply stored for it
        app = web.Application()
        app.router.add_post("/v1/chat", self._chat)
        app.router.add_post("/v1/feedback", self._feedback)
        app.router.add_delete("/v1/channels/{channel_id}/context", self._forget)
        self.server = TestServer(app, host="127.0.0.1")

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def queue(self, *answers: Answer) -> None:
        self.answers.extend(answers)

    def reply_with(self, text: str, source: dict[str, Any] | None = None) -> None:
        """A reply in one piece (JSON, or a stream whose only event is the whole reply)."""
        self.queue(Answer(body=final(text, source)))

    def requests(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def _receive(self, request: web.Request) -> Received:
        body = await request.json() if request.can_read_body else None
        self.received.append(Received(request.method, request.path, dict(request.headers), body, time.monotonic()))
        return self.received[-1]

    async def _answer(self, request: web.Request, default: Answer) -> web.StreamResponse:
        await self._receive(request)
        answer = self.answers.popleft() if self.answers else default
        await asyncio.sleep(answer.delay)
        if answer.status == 204:
            return web.Response(status=204, headers=answer.headers)
        payload = answer.body if answer.body is not None else default.body
        return web.json_response(payload, status=answer.status, headers=answer.headers)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        received = await self._receive(request)
        key = request.headers.get("Idempotency-Key")
        if key in self.committed:
            return web.json_response(self.committed[key])
        answer = self.answers.popleft() if self.answers else Answer(body=final(DEFAULT_REPLY))
        await asyncio.sleep(answer.delay)
        if answer.status != 200:
            return web.json_response(answer.body, status=answer.status, headers=answer.headers)
        events = answer.events if answer.events is not None else [(0.0, answer.body)]
        whole = answer.body or next((e for _, e in events if isinstance(e, dict) and "reply" in e), None)
        if key and whole and answer.commit:
            self.committed[key] = whole
        if not (isinstance(received.json, dict) and received.json.get("stream")):
            return web.json_response(whole)
        return await self._stream(request, events, answer.done)

    async def _stream(self, request: web.Request, events: list[tuple[float, Any]], done: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        for wait, event in events:
            await asyncio.sleep(wait)
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        if not done:
            request.transport.close()  # the connection drops midway
            return response
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _feedback(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, Answer(status=204))

    async def _forget(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, Answer(status=204))

    async def __aenter__(self) -> ContractBackend:
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.close()


def busy(retry_after: str = "0") -> Answer:
    """The contract's 503 for an overloaded or not-ready model."""
    body = {"error": {"code": "overloaded", "message": "model busy"}}
    return Answer(status=503, body=body, headers={"Retry-After": retry_after})
