"""The channel store this replica uses: Redis when REDIS_URL is set (a cluster), else process memory."""
import logging

from serve.api.context import ContextStore, MemoryContext
from serve.api.redis_context import RedisContext

log = logging.getLogger("ray.serve.chandler.context")


def open_store(redis_url: str | None, max_turns: int, ttl_s: int, feedback_max: int) -> ContextStore:
    if redis_url:
        log.info("channel context in Redis (last %d turns, TTL %ds)", max_turns, ttl_s)
        return RedisContext(redis_url, max_turns, ttl_s, feedback_max)
    log.warning(
        "REDIS_URL is not set: channel context is kept in this process's memory "
        "(last %d turns, TTL %ds; lost on restart, not shared between replicas)",
        max_turns,
        ttl_s,
    )
    return MemoryContext(max_turns, ttl_s, feedback_max)
