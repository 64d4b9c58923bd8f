"""The channel store in Redis (the rules are in serve/api/context.py), shared by every ingress replica.

Keys per channel: `chandler:ctx:{id}` (a list of JSON turns), `chandler:state:{id}` (a hash:
`seq` tickets handed out, `finished` the highest ticket done, `gen` the generation) and
`chandler:reply:{id}:{key}` (a reply kept for its Idempotency-Key); all expire `ttl_s` after
the channel's last change. A commit is one Lua script, so the generation check, the write and
the stored reply happen at once. Feedback is one capped stream, `chandler:feedback`.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from serve.api.context import Commit, Ticket

log = logging.getLogger("ray.serve.chandler.context")

KEY = "chandler:ctx:{}"
STATE = "chandler:state:{}"
REPLY = "chandler:reply:{}:{}"
FEEDBACK = "chandler:feedback"

# KEYS: context, state, reply. ARGV: generation, seq, max_turns, ttl, '=' + the replaced reply ('' to append),
# response ('' without an Idempotency-Key), then the turns as JSON (stamped with the server's time here).
COMMIT = """
local function finish()
  if tonumber(ARGV[2]) > tonumber(redis.call('HGET', KEYS[2], 'finished') or '0') then
    redis.call('HSET', KEYS[2], 'finished', ARGV[2])
  end
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
if ARGV[6] ~= '' then
  local kept = redis.call('GET', KEYS[3])
  if kept then finish() return kept end
end
if (redis.call('HGET', KEYS[2], 'gen') or '0') ~= ARGV[1] then finish() return 'forgotten' end
local now = redis.call('TIME')
local turns = {}
for i = 7, #ARGV do
  local t = cjson.decode(ARGV[i])
  t.ts = tonumber(now[1]) + tonumber(now[2]) / 1000000
  turns[#turns + 1] = cjson.encode(t)
end
if ARGV[5] ~= '' then
  local last = redis.call('LINDEX', KEYS[1], -1)
  local old = last and cjson.decode(last)
  if not old or old.role ~= 'assistant' or '=' .. old.text ~= ARGV[5] then finish() return 'conflict' end
  redis.call('LSET', KEYS[1], -1, turns[1])
else
  redis.call('RPUSH', KEYS[1], unpack(turns))
  redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1)
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
if ARGV[6] ~= '' then redis.call('SET', KEYS[3], ARGV[6], 'EX', ARGV[4]) end
finish()
return 'committed'
"""
RELEASE = """
if tonumber(ARGV[1]) > tonumber(redis.call('HGET', KEYS[1], 'finished') or '0') then
  redis.call('HSET', KEYS[1], 'finished', ARGV[1])
end
"""


class RedisContext:
    """redis-py's asyncio client; its pool reconnects by itself once Redis is back."""

    kind = "redis"

    def __init__(self, url: str, max_turns: int, ttl_s: int, feedback_max: int = 100_000, timeout_s: float = 2.0) -> None:
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff

        self.max_turns, self.ttl_s, self.feedback_max = max_turns, ttl_s, feedback_max
        # Two quick retries: after a Redis restart the first command meets a dead pooled connection,
        # and without a retry that exchange would be answered but not stored.
        self.client = redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=10, decode_responses=True,
            retry=Retry(ExponentialBackoff(), 2),
        )
        self.commit_script = self.client.register_script(COMMIT)
        self.release_script = self.client.register_script(RELEASE)

    async def open(self, channel_id: str) -> tuple[Ticket, list[dict[str, Any]]]:
        state = STATE.format(channel_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hincrby(state, "seq", 1)
            pipe.hget(state, "gen")
            pipe.expire(state, self.ttl_s)
            pipe.lrange(KEY.format(channel_id), -self.max_turns, -1)
            seq, generation, _, raw = await pipe.execute()
        return Ticket(int(seq), int(generation or 0)), self._parse(channel_id, raw)

    async def finished(self, channel_id: str) -> int:
        return int(await self.client.hget(STATE.format(channel_id), "finished") or 0)

    async def commit(self, channel_id: str, ticket: Ticket, commit: Commit) -> str:
        keys = [KEY.format(channel_id), STATE.format(channel_id), REPLY.format(channel_id, commit.key or "")]
        replaces = "" if commit.replaces is None else "=" + commit.replaces  # '' appends
        args = [ticket.generation, ticket.seq, self.max_turns, self.ttl_s, replaces,
                commit.response if commit.key else "", *(json.dumps(t, ensure_ascii=False) for t in commit.turns)]
        return await self.commit_script(keys=keys, args=args)

    async def release(self, channel_id: str, ticket: Ticket) -> None:
        await self.release_script(keys=[STATE.format(channel_id)], args=[ticket.seq])

    async def replay(self, channel_id: str, key: str) -> str | None:
        return await self.client.get(REPLY.format(channel_id, key))

    async def get(self, channel_id: str) -> list[dict[str, Any]]:
        return self._parse(channel_id, await self.client.lrange(KEY.format(channel_id), -self.max_turns, -1))

    async def forget(self, channel_id: str) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(KEY.format(channel_id))
            pipe.hincrby(STATE.format(channel_id), "gen", 1)
            pipe.expire(STATE.format(channel_id), self.ttl_s)
            await pipe.execute()

    async def add_feedback(self, entry: dict[str, str]) -> None:
        await self.client.xadd(FEEDBACK, entry, maxlen=self.feedback_max, approximate=True)

    async def ping(self) -> None:
        await self.client.ping()

    async def close(self) -> None:
        await self.client.aclose()

    @staticmethod
    def _parse(channel_id: str, raw: list[str]) -> list[dict[str, Any]]:
        turns = []
        for item in raw:
            try:
                turns.append(json.loads(item))
            except ValueError:
                log.warning("skipping a malformed turn in channel %s", channel_id)
        return turns
