"""A reply as it appears in Discord: posted at its first words, grown by edits, continued past 2,000 characters."""

from __future__ import annotations

import asyncio
import re
import time

import discord

from .backend import Reply

NO_PINGS = discord.AllowedMentions.none()
MESSAGE_LIMIT = 2000

_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]*_~]*(?=\s)|\n")
_QUOTE_TAG = re.compile(r"\n-# Friends S\d+E\d+$")


def shown(reply: Reply) -> str:
    """The reply as posted: one of Chandler's real lines carries a small episode tag."""
    source = reply.source
    if source.get("kind") == "quote" and isinstance(source.get("season"), int) and isinstance(source.get("episode"), int):
        return f"{reply.text}\n-# Friends S{source['season']}E{source['episode']}"
    return reply.text


def unshown(content: str) -> str:
    """The reply a message shows, without its episode tag."""
    return _QUOTE_TAG.sub("", content)


class Followups:
    """A slash command's follow-ups as the channel a ReplyWriter posts to: the first one replaces the
    deferred "thinking…" message, and the messages they return are edited with the interaction's token."""

    def __init__(self, interaction: discord.Interaction) -> None:
        self.interaction = interaction

    async def send(
        self, content: str, *, reference: None, allowed_mentions: discord.AllowedMentions, view: discord.ui.View = discord.utils.MISSING
    ) -> discord.WebhookMessage:  # `reference`: a follow-up answers its command, never a message
        return await self.interaction.followup.send(content, allowed_mentions=allowed_mentions, view=view, wait=True)


def split_message(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Cut text into pieces Discord accepts: at a sentence end late in the window, else at a space."""
    chunks: list[str] = []
    text = text.strip()
    while len(text) > limit:
        window = text[: limit + 1]
        ends = [m.end() for m in _SENTENCE_END.finditer(window)]
        if ends and ends[-1] > limit // 2:
            cut = ends[-1]
        else:
            space = max(window.rfind(" "), window.rfind("\n"))
            cut = space if space > 0 else limit
        chunks.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    return chunks + [text] if text else chunks


class ReplyWriter:
    """Shows a growing reply: the first words are posted at once, each message is then edited at
    most once per `interval` seconds (its last edit too), and past 2,000 characters the reply goes
    on in a new message. `first` continues an existing message (a regenerated reply) instead of
    posting one; `reference` makes the first post a reply to the question. Nothing pings anyone."""

    def __init__(
        self,
        channel: discord.abc.Messageable | Followups,
        interval: float,
        reference: discord.MessageReference | None = None,
        first: discord.Message | None = None,
    ) -> None:
        self.channel, self.interval, self.reference = channel, interval, reference
        self.messages: list[discord.Message] = [first] if first else []
        self.shown: list[str | None] = [None] if first else []  # None: not yet written by this writer
        self.edited_at: list[float] = [-float("inf")] if first else []
        self.text = ""

    @property
    def began(self) -> bool:
        return bool(self.text)

    async def grow(self, delta: str) -> None:
        self.text += delta
        await self._show(final=False)

    async def finish(self, text: str, view: discord.ui.View | None = None) -> list[discord.Message]:
        """Shows `text` in full (the last edits wait out the interval) with `view` under the last message."""
        self.text = text
        await self._show(final=True, view=view)
        return self.messages

    async def _show(self, final: bool, view: discord.ui.View | None = None) -> None:
        pieces = split_message(self.text)
        for i, piece in enumerate(pieces):
            complete = final or i < len(pieces) - 1  # this message will not change any more
            view_here = view if final and i == len(pieces) - 1 else None
            if i == len(self.messages):
                await self._post(piece, view_here)
            elif complete and (piece != self.shown[i] or view_here is not None or self.shown[i] is None):
                await self._edit(i, piece, view_here, wait=True)
            elif piece != self.shown[i] and time.monotonic() - self.edited_at[i] >= self.interval:
                await self._edit(i, piece, None, wait=False)
        if final:  # the whole reply came out shorter than what was shown
            for extra in self.messages[len(pieces):]:
                await extra.delete()
            del self.messages[len(pieces):]

    async def _post(self, piece: str, view: discord.ui.View | None) -> None:
        kwargs = {"view": view} if view else {}
        reference = self.reference if not self.messages else None
        message = await self.channel.send(piece, reference=reference, allowed_mentions=NO_PINGS, **kwargs)  # type: ignore[arg-type]
        self.messages.append(message)
        self.shown.append(piece)
        self.edited_at.append(time.monotonic())

    async def _edit(self, i: int, piece: str, view: discord.ui.View | None, wait: bool) -> None:
        if wait:  # a message's last edit also keeps to the interval
            await asyncio.sleep(max(0.0, self.edited_at[i] + self.interval - time.monotonic()))
        try:  # view=None takes a regenerated message's old button away while the new reply grows
            await self.messages[i].edit(content=piece, view=view, allowed_mentions=NO_PINGS)
        except discord.NotFound:
            pass  # deleted while it grew: nothing left to show there
        self.shown[i] = piece
        self.edited_at[i] = time.monotonic()
