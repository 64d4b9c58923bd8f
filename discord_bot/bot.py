"""The Discord client: mentions, DMs and slash commands in; the backend's replies out, pinging nobody."""

import asyncio
import json
import logging
import math
import re
import time
from typing import Any

import aiohttp
import discord
from discord import app_commands

from .config import DEFAULT_API_URL, Options

log = logging.getLogger(__name__)

NO_PINGS = discord.AllowedMentions.none()
MESSAGE_LIMIT = 2000
RETRYABLE_STATUS = {502, 503, 504}
INVITE_PERMISSIONS = discord.Permissions(
    view_channel=True, send_messages=True, send_messages_in_threads=True, read_message_history=True
)

APOLOGY = "Sorry, my brain is on a coffee break at Central Perk. Could I BE any less available? Try again in a minute."
TOO_MUCH = "Could that message BE any longer? Give me something shorter, I have the attention span of a duck."
EMPTY = "You rang? Say something after the mention, I'm funny, not psychic."
COOLDOWN = "Whoa, one sarcastic remark at a time. Give me {seconds} more seconds."
NOT_ALLOWED = "I'm not allowed to talk to you here. Story of my life."
FORGET_DENIED = "Wiping my memory takes the Manage Messages permission. I know. Could the rules BE any stricter?"
FORGOTTEN = "Done, I've forgotten everything we said here. Like my seventh-grade talent show."

_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]*_~]*(?=\s)|\n")


class BackendError(Exception):
    """The backend did not answer usefully; `wait` is set when one retry is worth it."""

    def __init__(self, reason: str, status: int | None = None, wait: float | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.wait = wait


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


class ChandlerBot(discord.Client):
    def __init__(self, api_url: str, api_key: str | None, options: Options) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        super().__init__(intents=intents, allowed_mentions=NO_PINGS)
        self.api_url = api_url.rstrip("/")
        self.options = options
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session: aiohttp.ClientSession | None = None
        self._last_request: dict[int, float] = {}
        self._warned: set[int] = set()
        self.tree = app_commands.CommandTree(self)
        self.tree.add_command(chandler_command)
        self.tree.add_command(forget_command)

    # --- lifecycle -------------------------------------------------------------------------

    async def setup_hook(self) -> None:
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
        if self._session is not None:
            await self._session.close()
        await super().close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self.options.timeout)
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=timeout)
        return self._session

    # --- who may talk, and how often -----------------------------------------------------

    def permitted(self, user: discord.abc.User, channel: Any) -> bool:
        o = self.options
        roles = [role.id for role in getattr(user, "roles", ())]
        if user.id in o.blocked_users or any(r in o.blocked_roles for r in roles):
            return False
        if (o.allowed_users or o.allowed_roles) and not (
            user.id in o.allowed_users or any(r in o.allowed_roles for r in roles)
        ):
            return False
        if getattr(channel, "guild", None) is None:
            return o.allow_dms
        places = [channel.id, getattr(channel, "parent_id", None), getattr(channel, "category_id", None)]
        if any(p in o.blocked_channels for p in places):
            return False
        return not o.allowed_channels or any(p in o.allowed_channels for p in places)

    def cooldown_left(self, user_id: int) -> float:
        """Seconds this user must still wait; 0 means go ahead, and starts a new cooldown."""
        now = time.monotonic()
        left = self._last_request.get(user_id, -math.inf) + self.options.cooldown - now
        if left > 0:
            return left
        self._last_request[user_id] = now
        self._warned.discard(user_id)
        return 0.0

    # --- the backend -----------------------------------------------------------------------

    async def _attempt(self, method: str, path: str, payload: dict[str, Any] | None) -> Any:
        try:
            async with self.session.request(method, self.api_url + path, json=payload) as resp:
                status, retry_after, raw = resp.status, resp.headers.get("Retry-After"), await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BackendError(f"unreachable ({type(exc).__name__})", wait=self.options.retry_wait) from exc
        if status in RETRYABLE_STATUS:
            raise BackendError(f"busy ({status})", status=status, wait=self._retry_after(retry_after))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            raise BackendError(f"answered {status} without JSON", status=status) from None
        if status >= 400:
            error = body.get("error") if isinstance(body, dict) else None
            code = error.get("code") if isinstance(error, dict) else None
            raise BackendError(f"refused ({status} {code})", status=status)
        return body

    def _retry_after(self, header: str | None) -> float:
        try:
            wait = float(header or "")
        except ValueError:
            wait = self.options.retry_wait
        return min(max(wait, 0.0), self.options.max_retry_wait)

    async def request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        """One backend call, retried once (after a capped backoff) when it is down, slow or overloaded."""
        try:
            return await self._attempt(method, path, payload)
        except BackendError as err:
            if err.wait is None:
                raise
            log.warning("backend %s; retrying %s %s once in %.1fs", err, method, path, err.wait)
            await asyncio.sleep(err.wait)
        return await self._attempt(method, path, payload)

    async def answer(self, channel_id: int | None, user: discord.abc.User, text: str) -> str:
        """Chandler's reply to `text`, or an in-character line when there is none to give."""
        if not text:
            return EMPTY
        log.info("chat: user %s in channel %s (%d chars)", user.id, channel_id, len(text))
        log.debug("chat message: %r", text)
        who = {"id": str(user.id), "name": user.display_name}
        payload = {"channel_id": str(channel_id), "user": who, "message": text}
        try:
            body = await self.request("POST", "/v1/chat", payload)
            reply = body.get("reply") if isinstance(body, dict) else None
            if not isinstance(reply, str) or not reply.strip():
                raise BackendError("answered without a reply")
        except BackendError as err:
            log.warning("chat failed for channel %s: %s", channel_id, err)
            return TOO_MUCH if err.status in {400, 413, 422} else APOLOGY
        log.info("reply for channel %s: %d chars, usage %s", channel_id, len(reply), body.get("usage"))
        log.debug("reply: %r", reply)
        return reply

    async def forget(self, channel_id: int | None) -> str:
        try:
            await self.request("DELETE", f"/v1/channels/{channel_id}/context")
        except BackendError as err:
            log.warning("forget failed for channel %s: %s", channel_id, err)
            return APOLOGY
        log.info("forgot the context of channel %s", channel_id)
        return FORGOTTEN

    # --- Discord events ---------------------------------------------------------------------

    def addressed(self, message: discord.Message) -> bool:
        """A DM, or a message that mentions the bot by name (@everyone and @here don't count)."""
        assert self.user is not None
        return message.guild is None or any(m.id == self.user.id for m in message.mentions)

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
        wait = self.cooldown_left(message.author.id)
        if wait:
            if message.author.id not in self._warned:
                self._warned.add(message.author.id)
                await message.reply(COOLDOWN.format(seconds=math.ceil(wait)), allowed_mentions=NO_PINGS)
            return
        async with message.channel.typing():
            reply = await self.answer(message.channel.id, message.author, self.text_of(message))
        first, *rest = split_message(reply)
        reference = message.to_reference(fail_if_not_exists=False)  # the question may be deleted meanwhile
        await message.channel.send(first, reference=reference, allowed_mentions=NO_PINGS)
        for chunk in rest:
            await message.channel.send(chunk, allowed_mentions=NO_PINGS)


def _refusal(interaction: discord.Interaction[ChandlerBot]) -> str | None:
    bot = interaction.client
    if not bot.permitted(interaction.user, interaction.channel):
        return NOT_ALLOWED
    wait = bot.cooldown_left(interaction.user.id)
    return COOLDOWN.format(seconds=math.ceil(wait)) if wait else None


@app_commands.command(name="chandler", description="Say something to Chandler Bing")
@app_commands.describe(message="What you want to tell him")
async def chandler_command(interaction: discord.Interaction[ChandlerBot], message: str) -> None:
    refusal = _refusal(interaction)
    if refusal:
        await interaction.response.send_message(refusal, ephemeral=True, allowed_mentions=NO_PINGS)
        return
    await interaction.response.defer(thinking=True)
    reply = await interaction.client.answer(interaction.channel_id, interaction.user, message.strip())
    for chunk in split_message(reply):
        await interaction.followup.send(chunk, allowed_mentions=NO_PINGS)


@app_commands.command(name="chandler-forget", description="Make Chandler forget this channel's conversation")
async def forget_command(interaction: discord.Interaction[ChandlerBot]) -> None:
    if not interaction.client.permitted(interaction.user, interaction.channel):
        await interaction.response.send_message(NOT_ALLOWED, ephemeral=True, allowed_mentions=NO_PINGS)
        return
    if interaction.guild is not None and not interaction.permissions.manage_messages:
        await interaction.response.send_message(FORGET_DENIED, ephemeral=True, allowed_mentions=NO_PINGS)
        return
    await interaction.response.defer(ephemeral=True, thinking=True)
    text = await interaction.client.forget(interaction.channel_id)
    await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_PINGS)


def create_bot(api_url: str = DEFAULT_API_URL, api_key: str | None = None, **options: Any) -> ChandlerBot:
    """The bot, not started: `bot.run(token)` connects it. Options are the fields of `config.Options`."""
    return ChandlerBot(api_url, api_key, Options(**options))
