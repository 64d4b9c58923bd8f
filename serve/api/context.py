"""Each channel's recent conversation: Redis in a cluster (serve/api/redis_context.py), process
memory on a single machine (here); serve/api/store.py picks one. Both keep the same rules:

- one list of turns `{role, name, text, ts}` per channel, trimmed to the last `max_turns`,
  expiring `ttl_s` after its last change; `ts` is stamped at commit, so it follows list order;
- a per-channel generation number: forgetting a channel bumps it, and an exchange opened under
  an older generation is not committed (the check is inside the commit, on every replica);
- a per-channel ticket: exchanges commit in the order they were opened (`Ticket.seq`), and
  `finished` says how far the channel has got;
- a reply sent under an Idempotency-Key is kept for `ttl_s`; a repeat gets it back and commits nothing;
- feedback entries go to a capped log.
"""
from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from data.dialogue import CHARACTER, Turn

DEFAULT_SPEAKER = "Guest"
MAX_MEMORY_CHANNELS = 10_000  # the memory store drops the least recently used channels past this
MAX_MEMORY_REPLIES = 1_000  # and, per channel, the oldest replies kept for an Idempotency-Key


def turn(role: str, name: str, text: str) -> dict[str, Any]:
    """A turn to commit; the store stamps its `ts`."""
    return {"role": role, "name": name, "text": text}


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


@dataclass(frozen=True)
class Ticket:
    """An exchange opened on a channel: its place in the channel's order and the generation it saw."""

    seq: int
    generation: int


@dataclass(frozen=True)
class Commit:
    """What to write: `turns` appended, or, with `replaces` (the old reply's text), the channel's
    last reply replaced by `turns[0]`; `replaced`: every reply the regenerations of this exchange
    have replaced, kept in the new reply's turn so that "another one" never comes back to one;
    `key`/`response`: an Idempotency-Key and the reply kept under it."""

    turns: tuple[dict[str, Any], ...]
    replaces: str | None = None
    replaced: tuple[str, ...] = ()
    key: str | None = None
    response: str = ""


# Outcomes of a commit, besides a replayed response (a str):
COMMITTED, FORGOTTEN, CONFLICT = "committed", "forgotten", "conflict"


class ContextStore(Protocol):
    kind: str

    async def open(self, channel_id: str) -> tuple[Ticket, list[dict[str, Any]]]: ...
    async def finished(self, channel_id: str) -> int: ...
    async def commit(self, channel_id: str, ticket: Ticket, commit: Commit) -> str: ...
    async def release(self, channel_id: str, ticket: Ticket) -> None: ...
    async def replay(self, channel_id: str, key: str) -> str | None: ...
    async def get(self, channel_id: str) -> list[dict[str, Any]]: ...
    async def forget(self, channel_id: str) -> None: ...
    async def add_feedback(self, entry: dict[str, str]) -> None: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


@dataclass
class _Channel:
    turns: deque
    expires: float
    seq: int = 0
    finished: int = 0
    generation: int = 0
    replies: dict[str, str] = field(default_factory=dict)  # Idempotency-Key → response


class MemoryContext:
    """The single-machine default: lost on restart and not shared between ingress replicas."""

    kind = "memory"

    def __init__(self, max_turns: int, ttl_s: int, feedback_max: int = 10_000) -> None:
        self.max_turns, self.ttl_s = max_turns, ttl_s
        self.channels: OrderedDict[str, _Channel] = OrderedDict()
        self.feedback: deque = deque(maxlen=feedback_max)

    def _channel(self, channel_id: str) -> _Channel:
        now = time.monotonic()
        entry = self.channels.get(channel_id)
        if entry is None or entry.expires <= now:
            entry = _Channel(deque(maxlen=self.max_turns), now + self.ttl_s)
            self.channels[channel_id] = entry
        self.channels.move_to_end(channel_id)
        while len(self.channels) > MAX_MEMORY_CHANNELS:
            self.channels.popitem(last=False)
        return entry

    async def open(self, channel_id: str) -> tuple[Ticket, list[dict[str, Any]]]:
        entry = self._channel(channel_id)
        entry.seq += 1
        return Ticket(entry.seq, entry.generation), list(entry.turns)

    async def finished(self, channel_id: str) -> int:
        return self._channel(channel_id).finished

    async def commit(self, channel_id: str, ticket: Ticket, commit: Commit) -> str:
        entry = self._channel(channel_id)
        entry.finished = max(entry.finished, ticket.seq)
        if commit.key and commit.key in entry.replies:
            return entry.replies[commit.key]
        if entry.generation != ticket.generation:
            return FORGOTTEN
        last_ts = entry.turns[-1]["ts"] if entry.turns else 0.0
        stamped = [{**t, "ts": max(time.time(), last_ts)} for t in commit.turns]
        if commit.replaces is not None:
            last = entry.turns[-1] if entry.turns else {}
            if last.get("role") != "assistant" or last.get("text") != commit.replaces:
                return CONFLICT
            entry.turns[-1] = stamped[0]
        else:
            entry.turns.extend(stamped)
        if commit.key:
            entry.replies[commit.key] = commit.response
            if len(entry.replies) > MAX_MEMORY_REPLIES:
                del entry.replies[next(iter(entry.replies))]
        entry.expires = time.monotonic() + self.ttl_s
        return COMMITTED

    async def release(self, channel_id: str, ticket: Ticket) -> None:
        entry = self._channel(channel_id)
        entry.finished = max(entry.finished, ticket.seq)

    async def replay(self, channel_id: str, key: str) -> str | None:
        return self._channel(channel_id).replies.get(key)

    async def get(self, channel_id: str) -> list[dict[str, Any]]:
        return list(self._channel(channel_id).turns)

    async def forget(self, channel_id: str) -> None:
        entry = self._channel(channel_id)
        entry.turns.clear()
        entry.generation += 1

    async def add_feedback(self, entry: dict[str, str]) -> None:
        self.feedback.append(entry)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
