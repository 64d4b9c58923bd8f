"""One exchange on a channel, against the store: open it (history and a ticket), wait for the
channel's earlier exchanges, commit it, or release the ticket when it fails; and ride out a store
that is down or slow (the reply is still sent, without history or without being stored).

Every step is bounded by the request's deadline: the backend answers within
CHANDLER_REQUEST_TIMEOUT plus at most one second for the commit."""
import asyncio
import json
import logging
import time
from dataclasses import replace
from typing import Any

from data.dialogue import CHARACTER
from serve.api.context import COMMITTED, CONFLICT, FORGOTTEN, Commit, ContextStore, Ticket, turn
from serve.api.errors import ApiError

log = logging.getLogger("ray.serve.chandler")

POLL_S = 0.02  # how often an exchange checks whether the channel's earlier ones are done
READ_S = 3.0  # the longest a store read may take


class Exchange:
    def __init__(self, store: ContextStore) -> None:
        self.store = store
        self.up = True
        self.background: set[asyncio.Task] = set()

    async def guard(self, what: str, awaitable, timeout: float) -> tuple[bool, Any]:
        """(True, result), or (False, None) when the store failed or took longer than `timeout`."""
        try:
            result = await asyncio.wait_for(awaitable, max(0.1, timeout))
        except Exception as error:
            if self.up:
                log.warning("Redis unavailable (%s: %s): replying without channel history until it is back", what,
                            type(error).__name__)
            self.up = False
            return False, None
        if not self.up:
            log.info("Redis is back: channel history resumes")
        self.up = True
        return True, result

    async def replayed(self, channel: str, key: str, deadline: float) -> dict[str, Any] | None:
        """The answer already sent for this Idempotency-Key, if any."""
        ok, kept = await self.guard("read", self.store.replay(channel, key), min(READ_S, deadline - time.monotonic()))
        return json.loads(kept) if ok and kept else None

    async def open(self, channel: str, deadline: float) -> tuple[Ticket | None, list[dict[str, Any]]]:
        ok, opened = await self.guard("read", self.store.open(channel), min(READ_S, deadline - time.monotonic()))
        return opened if ok else (None, [])

    async def commit(self, channel: str, ticket: Ticket | None, commit: Commit, answer: dict[str, Any],
                     deadline: float) -> dict[str, Any]:
        """Commit the exchange once the channel's earlier exchanges are done (or the deadline has
        passed); returns the answer to send: `answer`, or the one already sent for the same
        Idempotency-Key. A regenerated reply whose channel moved on meanwhile is a 409."""
        if ticket is None:  # the store was down when the exchange opened
            return answer
        reply = turn("assistant", CHARACTER, answer["reply"]) | ({"replaced": list(commit.replaced)} if commit.replaced else {})
        commit = replace(commit, turns=(*commit.turns, reply), response=json.dumps(answer, ensure_ascii=False))

        async def in_order() -> str:
            while ticket.seq - 1 > await self.store.finished(channel) and time.monotonic() < deadline:
                await asyncio.sleep(POLL_S)
            return await self.store.commit(channel, ticket, commit)

        ok, outcome = await self.guard("write", in_order(), deadline - time.monotonic() + 1)
        if not ok or outcome in (COMMITTED, FORGOTTEN):
            if not ok:
                self.release(channel, ticket)
            return answer
        if outcome == CONFLICT:
            raise ApiError(409, "conflict", "the channel has moved on since the reply to regenerate; nothing was replaced")
        return json.loads(outcome)

    def release(self, channel: str, ticket: Ticket | None) -> None:
        """An exchange that will not commit: the channel's later exchanges need not wait for it."""
        if ticket is not None:
            task = asyncio.create_task(self.guard("write", self.store.release(channel, ticket), READ_S))
            self.background.add(task)
            task.add_done_callback(self.background.discard)
