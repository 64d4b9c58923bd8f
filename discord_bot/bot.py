"""The Discord client: mentions, replies to it, DMs, slash commands, its button and reactions in;
the backend's replies out, streamed by edits, pinging nobody."""

from __future__ import annotations

import logging
import math
import re
import time
from collections import OrderedDict
from typing import Any, Generic, TypeVar

import discord
from discord import app_commands

from .backend import Backend, BackendError, Reply
from .buttons import AnotherOne
from .commands import chandler_command, forget_command
from .config import DEFAULT_API_URL, Options
from .lines import APOLOGY, COOLDOWN, EMPTY, FORGOTTEN, GONE, NOT_ALLOWED, NOT_LATEST, NOT_YOURS, TOO_MUCH
from .writer import NO_PINGS, ReplyWriter, shown, unshown

log = logging.getLogger(__name__)

INVITE_PERMISSIONS = discord.Permissions(
    view_channel=True, send_messages=True, send_messages_in_threads=True, read_message_history=True
)
RATINGS = {"👍": 1, "👎": -1}
LATEST_WINDOW = 50  # the button works while its reply is the bot's last message among this many
# what the backend's refusals mean to the user (409: a regenerate after the channel moved on)
REFUSALS = {400: TOO_MUCH, 413: TOO_MUCH, 422: TOO_MUCH, 409: NOT_LATEST}

K, V = TypeVar("K"), TypeVar("V")


class Recent(OrderedDict, Generic[K, V]):
    """A dict that keeps only its `size` most recently set keys, like llmcord's bounded caches."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class ChandlerBot(discord.Client):
    def __init__(self, api_url: str, api_key: str | None, options: Options) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        super().__init__(intents=intents, allowed_mentions=NO_PINGS)
        self.options = options
        self.backend = Backend(api_url, api_key, options)
        self.cooldowns: Recent[int, tuple[float, bool]] = Recent(options.remembered)  # user → (last request, warned)
        self.replies: Recent[int, tuple[int, str]] = Recent(options.remembered)  # message → (channel, reply it shows)
        self.tree = app_commands.CommandTree(self)
        self.tree.add_command(chandler_command)
        self.tree.add_command(forget_command)

    # --- lifecycle -------------------------------------------------------------------------

    async def setup_hook(self) -> None:
        self.add_dynamic_items(AnotherOne)  # buttons under replies sent before a restart still work
        guild_id = self.options.dev_guild_id
        if guild_id:
            self.tree.copy_global_to(guild=discord.Object(guild_id))
        synced = await self.tree.sync(guild=discord.Object(guild_id) if guild_id else None)
        log.info("synced %d slash commands %s", len(synced), f"to guild {guild_id}" if guild_id else "globally")

    async def on_ready(self) -> None:
        assert self.user is not None
        scopes = ("bot", "applications.commands")
        url = discord.utils.oauth_url(self.user.id, permissions=INVITE_PERMISSIONS, scopes=scopes)
        log.info("logged in as %s (%s) in %d guilds; invite: %s", self.user, self.user.id, len(self.guilds), url)

    async def close(self) -> None:
        await self.backend.close()
        await super().close()

    # --- who may talk, and how often -----------------------------------------------------

    def permitted(self, user: discord.abc.User, channel: Any) -> bool:
        o = self.options
        roles = [role.id for role in getattr(user, "roles", ())]
        if user.id in o.blocked_users or any(r in o.blocked_roles for r in roles):
            return False
        if (o.allowed_users or o.allowed_roles) and not (user.id in o.allowed_users or any(r in o.allowed_roles for r in roles)):
            return False
        if getattr(channel, "guild", None) is None:
            return o.allow_dms
        places = [channel.id, getattr(channel, "parent_id", None), getattr(channel, "category_id", None)]
        if any(p in o.blocked_channels for p in places):
            return False
        return not o.allowed_channels or any(p in o.allowed_channels for p in places)

    def cooldown_left(self, user_id: int) -> tuple[float, bool]:
        """Seconds this user must still wait (0: go ahead, and a new cooldown starts), and whether they were told."""
        now = time.monotonic()
        last, warned = self.cooldowns.get(user_id, (-math.inf, False))
        left = last + self.options.cooldown - now
        if left > 0:
            self.cooldowns[user_id] = (last, True)
            return left, warned
        self.cooldowns[user_id] = (now, False)
        return 0.0, False

    # --- turns with the backend ------------------------------------------------------------

    @staticmethod
    def turn(channel_id: int | None, user: discord.abc.User, text: str | None) -> dict[str, Any]:
        """A chat request: `user` says `text`, or (None) asks for another reply to the channel's last message."""
        payload: dict[str, Any] = {"channel_id": str(channel_id), "user": {"id": str(user.id), "name": user.display_name}}
        if text is None:
            log.info("chat: user %s in channel %s asks for another one", user.id, channel_id)
            return {**payload, "regenerate": True}
        log.info("chat: user %s in channel %s (%d chars)", user.id, channel_id, len(text))
        log.debug("chat message: %r", text)
        return {**payload, "message": text}

    async def answer(self, payload: dict[str, Any], key: str) -> Reply | str:
        """Chandler's whole reply, or the in-character line to post when there is none."""
        try:
            return await self.backend.chat(payload, key)
        except BackendError as err:
            log.warning("chat failed for channel %s: %s", payload["channel_id"], err)
            return REFUSALS.get(err.status, APOLOGY)

    async def converse(self, payload: dict[str, Any], key: str, writer: ReplyWriter, view: discord.ui.View) -> str | None:
        """Streams a reply into `writer`. A stream that breaks midway ends with what the backend
        committed (asked again with the same key), else with the apology. When there is no reply
        and nothing was shown yet, returns the in-character line for the caller to post."""
        reply: Reply | str = APOLOGY
        try:
            async for piece in self.backend.stream(payload, key):
                if isinstance(piece, Reply):
                    reply = piece
                else:
                    await writer.grow(piece)
        except BackendError as err:
            log.warning("chat stream failed for channel %s: %s", payload["channel_id"], err)
            if err.status in REFUSALS:
                reply = REFUSALS[err.status]
            elif writer.began:
                reply = await self.answer(payload, key)
        if isinstance(reply, str):
            if not writer.began:
                return reply
            await writer.finish(reply)
            return None
        log.info("reply for channel %s: %d chars, source %s, usage %s", payload["channel_id"], len(reply.text), reply.source, reply.usage)
        log.debug("reply: %r", reply.text)
        for message in await writer.finish(shown(reply), view):
            self.replies[message.id] = (int(payload["channel_id"]), reply.text)
        return None

    async def forget(self, channel_id: int | None) -> str:
        try:
            await self.backend.forget(channel_id)
        except BackendError as err:
            log.warning("forget failed for channel %s: %s", channel_id, err)
            return APOLOGY
        log.info("forgot the context of channel %s", channel_id)
        return FORGOTTEN

    # --- messages ---------------------------------------------------------------------------

    def addressed(self, message: discord.Message) -> bool:
        """A DM, a mention of the bot by name (@everyone and @here don't count), or a reply to one of
        its messages, with the reply's ping on or off."""
        assert self.user is not None
        if message.guild is None or any(m.id == self.user.id for m in message.mentions):
            return True
        reference = message.reference
        replied = reference and (reference.resolved or reference.cached_message)
        return isinstance(replied, discord.Message) and replied.author.id == self.user.id

    def text_of(self, message: discord.Message) -> str:
        """The message as people read it, without the bot's own mention."""
        assert self.user is not None
        me = discord.utils.get(message.mentions, id=self.user.id)  # clean_content shows it as @display_name
        text = message.clean_content.replace(f"@{me.display_name}", "") if me else message.clean_content
        return re.sub(r"[ \t]{2,}", " ", text).strip()

    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or message.author == self.user or not self.addressed(message):
            return
        if not self.permitted(message.author, message.channel):
            return
        wait, warned = self.cooldown_left(message.author.id)
        if wait:
            if not warned:
                await message.reply(COOLDOWN.format(seconds=math.ceil(wait)), allowed_mentions=NO_PINGS)
            return
        reference = message.to_reference(fail_if_not_exists=False)  # the question may be deleted meanwhile
        writer = ReplyWriter(message.channel, self.options.edit_interval, reference=reference)
        text, failed = self.text_of(message), EMPTY
        if text:
            async with message.channel.typing():
                # the Discord message id is the Idempotency-Key: a resent request never stores the turn twice
                turn = self.turn(message.channel.id, message.author, text)
                failed = await self.converse(turn, str(message.id), writer, AnotherOne.view(message.author.id, message.id))
        if failed:
            await writer.finish(failed)

    # --- "another one" ----------------------------------------------------------------------

    async def another_one(self, interaction: discord.Interaction, asker: int, question_id: int | None) -> None:
        """A different reply to the same question, in place of the pressed one (the backend replaces
        the channel's last reply instead of adding a turn). `question_id` is the message it answered
        (None for a /chandler reply), which must still be there."""
        refusal = await self._another_one_refusal(interaction, asker)
        if not refusal and question_id is not None and await self._message(interaction.channel, question_id) is None:
            refusal = GONE
        if refusal:
            await interaction.response.send_message(refusal, ephemeral=True, allowed_mentions=NO_PINGS)
            return
        await interaction.response.defer()
        writer = ReplyWriter(interaction.channel, self.options.edit_interval, first=interaction.message)
        payload = self.turn(interaction.channel_id, interaction.user, None)
        failed = await self.converse(payload, str(interaction.id), writer, AnotherOne.view(asker, question_id))
        if failed:  # the reply on show stays as it was
            await interaction.followup.send(failed, ephemeral=True, allowed_mentions=NO_PINGS)

    async def _another_one_refusal(self, interaction: discord.Interaction, asker: int) -> str | None:
        if not self.permitted(interaction.user, interaction.channel):
            return NOT_ALLOWED
        manages = interaction.guild is not None and interaction.permissions.manage_messages
        if interaction.user.id != asker and not manages:
            return NOT_YOURS
        try:
            mine = [m.id async for m in interaction.channel.history(limit=LATEST_WINDOW) if m.author.id == self.user.id]
        except discord.HTTPException:  # no Read Message History here: the latest reply cannot be told
            mine = []
        if not mine or interaction.message is None or max(mine) != interaction.message.id:
            return NOT_LATEST
        wait, _ = self.cooldown_left(interaction.user.id)
        return COOLDOWN.format(seconds=math.ceil(wait)) if wait else None

    @staticmethod
    async def _message(channel: Any, message_id: int) -> discord.Message | None:
        try:
            return await channel.fetch_message(message_id)
        except (discord.NotFound, discord.Forbidden):
            return None

    # --- reactions as feedback ----------------------------------------------------------------

    async def on_raw_message_delete(self, event: discord.RawMessageDeleteEvent) -> None:
        self.replies.pop(event.message_id, None)  # a deleted reply can no longer be rated

    async def on_raw_reaction_add(self, event: discord.RawReactionActionEvent) -> None:
        """👍 / 👎 on one of the bot's replies → POST /v1/feedback. Anything else is ignored."""
        rating = RATINGS.get(str(event.emoji))
        if rating is None or event.user_id == self.user.id or (event.member is not None and event.member.bot):
            return
        if event.message_author_id is not None and event.message_author_id != self.user.id:
            return
        channel_id, reply = self.replies.get(event.message_id) or await self._reply_after_restart(event)
        if not reply:
            return
        try:
            await self.backend.feedback(channel_id, reply, rating, event.user_id)
        except BackendError as err:
            log.warning("feedback for channel %s not stored: %s", channel_id, err)
            return
        log.info("feedback %+d on a reply in channel %s", rating, channel_id)

    async def _reply_after_restart(self, event: discord.RawReactionActionEvent) -> tuple[int, str | None]:
        """The reply a message shows, read from Discord: only a bot message with the button is one."""
        try:
            channel = self.get_channel(event.channel_id) or await self.fetch_channel(event.channel_id)
        except (discord.NotFound, discord.Forbidden):
            return event.channel_id, None
        message = await self._message(channel, event.message_id)
        if message is None or message.author.id != self.user.id or not message.components:
            return event.channel_id, None
        return event.channel_id, unshown(message.content)


def create_bot(api_url: str = DEFAULT_API_URL, api_key: str | None = None, **options: Any) -> ChandlerBot:
    """The bot, not started: `bot.run(token)` connects it. Options are the fields of `config.Options`."""
    return ChandlerBot(api_url, api_key, Options(**options))
