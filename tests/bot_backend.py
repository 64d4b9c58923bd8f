"""A real HTTP server on loopback that speaks the bot ↔ backend contract, for the bot's tests.

Tests queue the answers it gives and read back every request it received.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

DEFAULT_REPLY = "Could I BE any more tested?"


@dataclass
class Answer:
    status: int = 200
    body: Any = None  # JSON body; None means the contract's default for the route
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    json: Any
    at: float


class ContractBackend:
    def __init__(self) -> None:
        self.answers: deque[Answer] = deque()
        self.received: list[Received] = []
        app = web.Application()
        app.router.add_post("/v1/chat", self._chat)
        app.router.add_delete("/v1/channels/{channel_id}/context", self._forget)
        self.server = TestServer(app, host="127.0.0.1")

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def queue(self, *answers: Answer) -> None:
        self.answers.extend(answers)

    def reply_with(self, text: str) -> None:
        self.queue(Answer(body={"reply": text, "usage": {"prompt_tokens": 10, "completion_tokens": 5}}))

    async def _answer(self, request: web.Request, default: Answer) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.received.append(Received(request.method, request.path, dict(request.headers), body, time.monotonic()))
        answer = self.answers.popleft() if self.answers else default
        await asyncio.sleep(answer.delay)
        if answer.status == 204:
            return web.Response(status=204, headers=answer.headers)
        payload = answer.body if answer.body is not None else default.body
        return web.json_response(payload, status=answer.status, headers=answer.headers)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, Answer(body={"reply": DEFAULT_REPLY, "usage": {}}))

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
