"""Each channel's recent conversation: Redis in a cluster, process memory on a single machine.

One Redis list per channel, `chandler:ctx:{channel_id}`, of JSON turns `{role, name, text, ts}`
(role `user` or `assistant`). Appending pushes the new turns, trims the list to the last
`max_turns` and renews the TTL in one MULTI/EXEC transaction, so concurrent requests never leave
a half-written exchange or an over-long list behind.
"""
from __future__ import annotations

import json
import logging
import time
from collections import deque
from typing import Any, Protocol

from data.dialogue import CHARACTER, Turn

log = logging.getLogger("ray.serve.chandler.context")  # into the replica logs under Ray Serve

KEY = "chandler:ctx:{}"
DEFAULT_SPEAKER = "Guest"


def turn(role: str, name: str, text: str, ts: float | None = None) -> dict[str, Any]:
    return {"role": role, "name": name, "text": text, "ts": time.time() if ts is None else ts}


def speaker(name: str | None) -> str:
    """The first name the prompt shows for a user: the first word of the display name, letters,
    digits and `'-_.` only. A user whose first name is the character's own becomes `Guest`, or
    their lines would read as the bot's."""
    first = (name or "").split()[0] if (name or "").split() else ""
    first = "".join(c for c in first if c.isalnum() or c in "'-_.")
    return DEFAULT_SPEAKER if not first or first.lower() == CHARACTER.lower() else first


def to_turns(stored: list[dict[str, Any]]) -> list[Turn]:
    """Stored turns → the engine's `{speaker, text}` turns."""
    return [
        {"speaker": CHARACTER if t.get("role") == "assistant" else speaker(t.get("name")), "text": str(t.get("text", ""))}
        for t in stored
    ]


class ContextStore(Protocol):
    kind: str

    async def get(self, channel_id: str) -> list[dict[str, Any]]: ...
    async def append(self, channel_id: str, *turns: dict[str, Any]) -> None: ...
    async def clear(self, channel_id: str) -> None: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


class RedisContext:
    """redis-py's asyncio client; its pool reconnects by itself once Redis is back."""

    kind = "redis"

    def __init__(self, url: str, max_turns: int, ttl_s: int, timeout_s: float = 2.0) -> None:
        import redis.asyncio as redis

        self.max_turns, self.ttl_s = max_turns, ttl_s
        self.client = redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=10, decode_responses=True
        )

    async def get(self, channel_id: str) -> list[dict[str, Any]]:
        raw = await self.client.lrange(KEY.format(channel_id), -self.max_turns, -1)
        turns = []
        for item in raw:
            try:
                turns.append(json.loads(item))
            except ValueError:
                log.warning("skipping a malformed turn in channel %s", channel_id)
        return turns

    async def append(self, channel_id: str, *turns: dict[str, Any]) -> None:
        key = KEY.format(channel_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *(json.dumps(t, ensure_ascii=False) for t in turns))
            pipe.ltrim(key, -self.max_turns, -1)
            pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def clear(self, channel_id: str) -> None:
        await self.client.delete(KEY.format(channel_id))

    async def ping(self) -> None:
        await self.client.ping()

    async def close(self) -> None:
        await self.client.aclose()


class MemoryContext:
    """The single-machine default: lost on restart and not shared between ingress replicas."""

    kind = "memory"

    def __init__(self, max_turns: int, ttl_s: int) -> None:
        self.max_turns, self.ttl_s = max_turns, ttl_s
        self.channels: dict[str, tuple[deque, float]] = {}

    def _live(self, channel_id: str) -> deque | None:
        entry = self.channels.get(channel_id)
        if entry and entry[1] <= time.monotonic():
            del self.channels[channel_id]
            return None
        return entry[0] if entry else None

    async def get(self, channel_id: str) -> list[dict[str, Any]]:
        return list(self._live(channel_id) or ())

    async def append(self, channel_id: str, *turns: dict[str, Any]) -> None:
        kept = self._live(channel_id) or deque(maxlen=self.max_turns)
        kept.extend(turns)
        self.channels[channel_id] = (kept, time.monotonic() + self.ttl_s)
        if len(self.channels) > 10_000:  # drop what has expired now and then
            for cid in list(self.channels):
                self._live(cid)

    async def clear(self, channel_id: str) -> None:
        self.channels.pop(channel_id, None)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


def open_store(redis_url: str | None, max_turns: int, ttl_s: int) -> ContextStore:
    if redis_url:
        log.info("channel context in Redis (last %d turns, TTL %ds)", max_turns, ttl_s)
        return RedisContext(redis_url, max_turns, ttl_s)
    log.warning(
        "REDIS_URL is not set: channel context is kept in this process's memory "
        "(last %d turns, TTL %ds; lost on restart, not shared between replicas)",
        max_turns,
        ttl_s,
    )
    return MemoryContext(max_turns, ttl_s)
