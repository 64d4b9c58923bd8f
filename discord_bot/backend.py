"""The bot's side of the HTTP contract (../shared/DESIGN.md): chat turns, whole or streamed, feedback, forget."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp

from .config import Options

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {502, 503, 504}
T = TypeVar("T")


class BackendError(Exception):
    """The backend did not answer usefully; `wait` is set when one retry is worth it."""

    def __init__(self, reason: str, status: int | None = None, wait: float | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.wait = wait


@dataclass(frozen=True)
class Reply:
    text: str
    source: dict[str, Any] = field(default_factory=lambda: {"kind": "generated"})
    usage: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, body: Any) -> Reply:
        reply = body.get("reply") if isinstance(body, dict) else None
        if not isinstance(reply, str) or not reply.strip():
            raise BackendError("answered without a reply")
        source = body.get("source")
        return cls(reply, source if isinstance(source, dict) else {"kind": "generated"}, body.get("usage") or {})


class Backend:
    """One aiohttp session to the backend. Every call that can be resent carries an Idempotency-Key,
    and a resend (one, after a capped backoff, when the backend is down, slow or overloaded) reuses it."""

    def __init__(self, api_url: str, api_key: str | None, options: Options) -> None:
        self.url = api_url.rstrip("/")
        self.options = options
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self.options.timeout)
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    # --- one attempt, and the single retry ------------------------------------------------------

    async def _open(self, method: str, path: str, payload: Any, key: str | None) -> aiohttp.ClientResponse:
        headers = {"Idempotency-Key": key} if key else None
        try:
            resp = await self.session.request(method, self.url + path, json=payload, headers=headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BackendError(f"unreachable ({type(exc).__name__})", wait=self.options.retry_wait) from exc
        if resp.status < 400:
            return resp
        async with resp:
            retry_after, raw = resp.headers.get("Retry-After"), await resp.read()
        if resp.status in RETRYABLE_STATUS:
            raise BackendError(f"busy ({resp.status})", status=resp.status, wait=self._retry_after(retry_after))
        try:
            error = json.loads(raw).get("error") or {}
        except (ValueError, AttributeError):
            error = {}
        raise BackendError(f"refused ({resp.status} {error.get('code') if isinstance(error, dict) else None})", status=resp.status)

    def _retry_after(self, header: str | None) -> float:
        try:
            wait = float(header or "")
        except ValueError:
            wait = self.options.retry_wait
        return min(max(wait, 0.0), self.options.max_retry_wait)

    async def _json(self, method: str, path: str, payload: Any, key: str | None) -> Any:
        resp = await self._open(method, path, payload, key)
        try:
            async with resp:
                raw = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BackendError(f"cut off ({type(exc).__name__})", wait=self.options.retry_wait) from exc
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise BackendError(f"answered {resp.status} without JSON", status=resp.status) from None

    async def _retried(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        try:
            return await call()
        except BackendError as err:
            if err.wait is None:
                raise
            log.warning("backend %s; retrying %s once in %.1fs", err, what, err.wait)
            await asyncio.sleep(err.wait)
        return await call()

    async def request(self, method: str, path: str, payload: Any = None, key: str | None = None) -> Any:
        """One backend call, retried once (with the same key) when it is down, slow or overloaded."""
        return await self._retried(lambda: self._json(method, path, payload, key), f"{method} {path}")

    # --- the contract's calls ---------------------------------------------------------------

    async def chat(self, payload: dict[str, Any], key: str) -> Reply:
        return Reply.of(await self.request("POST", "/v1/chat", payload, key))

    async def stream(self, payload: dict[str, Any], key: str) -> AsyncIterator[str | Reply]:
        """The reply's pieces (str) as the backend sends them, then the whole Reply.

        Opening the stream is retried like `request`. A stream that breaks after that raises
        BackendError; the caller can then ask `chat` with the same key for what was committed."""
        resp = await self._retried(lambda: self._open("POST", "/v1/chat", {**payload, "stream": True}, key), "POST /v1/chat")
        finished = False
        async with resp:
            try:
                if resp.content_type != "text/event-stream":  # a reply in one piece
                    yield Reply.of(json.loads(await resp.read()))
                    return
                async for line in resp.content:
                    data = line.decode("utf-8").strip().removeprefix("data:").strip()
                    if not line.startswith(b"data:") or not data:
                        continue
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if "error" in event:
                        raise BackendError(f"stream failed ({(event['error'] or {}).get('code')})")
                    finished = "delta" not in event
                    yield event["delta"] if not finished else Reply.of(event)
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
                if not finished:  # once the whole reply is here, a lost [DONE] changes nothing
                    raise BackendError(f"stream broke ({type(exc).__name__})") from exc
        if not finished:
            raise BackendError("stream ended without the reply")

    async def feedback(self, channel_id: int, reply: str, rating: int, user_id: int) -> None:
        payload = {"channel_id": str(channel_id), "reply": reply, "rating": rating, "user": {"id": str(user_id)}}
        await self.request("POST", "/v1/feedback", payload)

    async def forget(self, channel_id: int | None) -> None:
        await self.request("DELETE", f"/v1/channels/{channel_id}/context")
