"""The Discord bot, driven by dpytest against a real HTTP backend on loopback that speaks the contract.

dpytest stands in for Discord's gateway and REST API; the slash commands get a stand-in Interaction
(Discord's side of an interaction), since dpytest does not do interactions, and one test runs a real
discord.Interaction against Discord's interaction endpoints on loopback (discord_interactions.py).
Nothing of the bot is mocked.
"""

import asyncio
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import discord
import discord.ext.test as dpytest
import pytest
import pytest_asyncio
from bot_backend import DEFAULT_REPLY, Answer, ContractBackend, busy, final, streamed
from discord.ext.test import backend as fake_discord
from discord.ext.test import callbacks, factories
from discord_interactions import TOKEN, DiscordInteractions

from discord_bot import bot as chandler
from discord_bot import create_bot, lines, split_message
from discord_bot.config import ConfigError, from_env


def pings_nobody(allowed_mentions: dict[str, Any]) -> bool:
    """Discord's allowed_mentions payload that lets no @everyone, user, role or replied-to author be pinged."""
    pings = (allowed_mentions.get(k) for k in ("users", "roles", "replied_user"))
    return allowed_mentions.get("parse") == [] and not any(pings)

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class World:
    bot: chandler.ChandlerBot
    channel: discord.TextChannel
    monica: discord.Member
    ross: discord.Member
    payloads: list[dict[str, Any]] = field(default_factory=list)  # what the bot POSTed to Discord's API
    typing: list[int] = field(default_factory=list)  # channels that got a typing indicator
    edits: list[tuple[float, int, dict[str, Any]]] = field(default_factory=list)  # (when, message id, PATCH payload)
    posted: dict[int, tuple[float, str]] = field(default_factory=dict)  # message id → (when, content) the bot posted

    def mention(self, text: str) -> str:
        return f"<@{self.bot.user.id}> {text}"

    async def say(self, text: str, member: discord.abc.User | None = None, channel: Any = None) -> discord.Message:
        return await dpytest.message(text, channel=channel or self.channel, member=member or self.monica)

    def sent(self) -> list[str]:
        return [p["content"] for p in self.payloads]

    def shown(self) -> list[str]:
        """What each message the bot posted says now, after its edits."""
        latest = {message_id: content for message_id, (_, content) in self.posted.items()}
        latest.update({message_id: payload["content"] for _, message_id, payload in self.edits})
        return list(latest.values())

    def custom_id(self, payload: dict[str, Any]) -> str | None:
        rows = payload.get("components") or []
        return rows[0]["components"][0]["custom_id"] if rows else None


def _record_discord_side(world: World) -> None:
    real_send = world.bot.http.send_message

    async def send_message(channel_id: int, *, params: Any) -> Any:
        world.payloads.append(params.payload)
        channel = world.bot.get_channel(channel_id)  # noqa: F841 - dpytest's fake API reads its caller's `channel`
        data = await real_send(channel_id, params=params)
        world.posted[int(data["id"])] = (time.monotonic(), data["content"])
        return data

    async def send_typing(channel: Any) -> None:
        world.typing.append(channel.id)

    async def edited(channel: Any, message: discord.Message, fields: dict[str, Any]) -> None:
        world.edits.append((time.monotonic(), message.id, fields["params"].payload))

    world.bot.http.send_message = send_message
    callbacks.set_callback(send_typing, "send_typing")
    callbacks.set_callback(edited, "edit_message")


async def no_command_sync(**kwargs: Any) -> list[Any]:
    """Discord's slash-command registration endpoint, which dpytest does not have."""
    return []


@pytest_asyncio.fixture
async def backend():
    async with ContractBackend() as server:
        yield server


@pytest_asyncio.fixture
async def start(backend):
    bots: list[chandler.ChandlerBot] = []

    async def start(api_url: str | None = None, **options: Any) -> World:
        options = {"cooldown": 0, "retry_wait": 0.05, **options}
        bot = create_bot(api_url or backend.url, api_key="test-key", **options)
        await bot._async_setup_hook()
        # dpytest finds the members a message mentions in the guild's member cache, so the test
        # client caches members; on Discord they arrive with the message, without that intent.
        bot._connection._intents.members = True
        bot._connection.member_cache_flags = discord.MemberCacheFlags.all()
        dpytest.configure(bot, members=["Monica", "Ross"])
        bot._connection.loop = asyncio.get_running_loop()  # dpytest's state leaves it unset; typing() needs it
        bot.tree.sync = no_command_sync
        await bot.setup_hook()  # what discord.py runs at login, on the state dpytest installed
        config = dpytest.get_config()
        world = World(bot, config.channels[0], *config.members)
        _record_discord_side(world)
        bots.append(bot)
        return world

    yield start
    await dpytest.empty_queue()
    for event in ("send_typing", "edit_message"):
        callbacks.remove_callback(event)
    for bot in bots:  # bot.close() would also close dpytest's fake gateway, which has no socket
        await bot.backend.close()


# --- mentions -------------------------------------------------------------------------------


async def test_mention_gets_a_reply_from_the_backend(start, backend):
    world = await start()
    backend.reply_with("Could this meeting BE any longer?")
    asked = await world.say(world.mention(f"how was work with <@{world.ross.id}>?"))

    [request] = backend.received
    assert (request.method, request.path) == ("POST", "/v1/chat")
    assert request.json == {
        "channel_id": str(world.channel.id),
        "user": {"id": str(world.monica.id), "name": world.monica.display_name},
        "message": f"how was work with @{world.ross.display_name}?",
        "stream": True,
    }
    assert request.headers["Authorization"] == "Bearer test-key"
    assert request.headers["Idempotency-Key"] == str(asked.id)
    assert world.typing == [world.channel.id]

    [payload] = world.payloads
    assert payload["content"] == "Could this meeting BE any longer?"
    assert pings_nobody(payload["allowed_mentions"])
    assert int(payload["message_reference"]["message_id"]) == asked.id  # a reply to that message
    assert dpytest.verify().message().content("Could this meeting BE any longer?")


async def test_message_without_a_mention_is_ignored(start, backend):
    world = await start()
    await world.say("Chandler, how was work?")
    await world.say(f"<@{world.ross.id}> how was work?")
    assert backend.received == []
    assert world.payloads == []
    assert dpytest.verify().message().nothing()


async def test_everyone_ping_is_not_a_mention_of_the_bot(start, backend):
    world = await start()
    # dpytest.message() never sets mention_everyone, so the gateway event is built with its factory
    data = factories.make_message_dict(
        world.channel, world.monica, content="@everyone meeting at Central Perk", mention_everyone=True
    )
    fake_discord.get_state().parse_message_create(data)
    await dpytest.run_all_events()
    assert world.bot.user.mentioned_in(world.channel.last_message)  # discord.py would count it ...
    assert backend.received == []  # ... the bot does not


async def test_bot_authors_are_ignored(start, backend):
    world = await start()
    other = fake_discord.get_state().store_user(factories.make_user_dict("Ugly Naked Bot", "0042", None, bot=True))
    other_member = fake_discord.make_member(other, world.channel.guild)
    await world.say(world.mention("beep boop"), member=other_member)
    assert backend.received == []
    assert world.payloads == []


async def test_its_own_reply_mentioning_itself_does_not_loop(start, backend):
    world = await start()
    backend.reply_with(f"Did somebody say <@{world.bot.user.id}>?")
    await world.say(world.mention("hi"))
    assert len(backend.received) == 1
    assert len(world.payloads) == 1


async def test_direct_message_needs_no_mention(start, backend):
    world = await start()
    dm = await world.monica.create_dm()
    await world.say("is this a DM?", channel=dm)
    assert backend.received[0].json["message"] == "is this a DM?"
    assert backend.received[0].json["channel_id"] == str(dm.id)
    assert world.sent() == [DEFAULT_REPLY]


async def test_bare_mention_gets_a_nudge_without_calling_the_backend(start, backend):
    world = await start()
    await world.say(f"<@{world.bot.user.id}>")
    assert backend.received == []
    assert world.sent() == [lines.EMPTY]


# --- what is sent back ------------------------------------------------------------------------


async def test_backend_reply_with_pings_pings_nobody(start, backend):
    world = await start()
    backend.reply_with(f"@everyone look, <@{world.ross.id}> and <@&234567890123456789> are here")
    await world.say(world.mention("who's here?"))
    [payload] = world.payloads
    assert payload["content"].startswith("@everyone look, <@")  # the text is kept, the pings are not
    assert pings_nobody(payload["allowed_mentions"])


def test_pinging_nobody_is_also_the_clients_default():
    # dpytest swaps the client's connection state, so this is checked on a bot it has not touched
    assert pings_nobody(create_bot("http://127.0.0.1:9").allowed_mentions.to_dict())


async def test_long_reply_is_split_at_sentence_ends(start, backend):
    world = await start()
    sentence = "I'm not great at the advice, can I interest you in a sarcastic comment? "
    text = (sentence * 60).strip()  # about 4,300 characters
    backend.reply_with(text)
    await world.say(world.mention("any advice?"))

    chunks = world.sent()
    assert len(chunks) == 3
    assert all(len(c) <= 2000 and c.endswith("comment?") for c in chunks)
    assert " ".join(chunks) == text
    assert "message_reference" in world.payloads[0]
    assert all("message_reference" not in p for p in world.payloads[1:])
    assert all(pings_nobody(p["allowed_mentions"]) for p in world.payloads)


def test_split_falls_back_to_words_then_hard_cuts():
    words = " ".join(["transponster"] * 400)  # no sentence ends
    chunks = split_message(words)
    assert [len(c) <= 2000 for c in chunks] == [True] * len(chunks)
    assert all(c.split() == ["transponster"] * len(c.split()) for c in chunks)  # no word was cut
    assert " ".join(chunks) == words
    assert split_message("x" * 4500) == ["x" * 2000, "x" * 2000, "x" * 500]
    assert split_message("short. text") == ["short. text"]


# --- backend trouble --------------------------------------------------------------------------


async def test_503_is_retried_once_then_apologised_for(start, backend):
    world = await start(max_retry_wait=0.3)
    backend.queue(busy(retry_after="10"), busy(retry_after="10"))
    await world.say(world.mention("hello?"))
    first, second = backend.received
    assert 0.25 <= second.at - first.at < 2  # Retry-After honoured, but capped
    assert world.sent() == [lines.APOLOGY]
    assert "Traceback" not in world.sent()[0]


async def test_503_then_success_delivers_the_reply(start, backend):
    world = await start(retry_wait=30)  # Retry-After: 0 must win over the default backoff
    backend.queue(busy(retry_after="0"))
    backend.reply_with("Sorry, I was in the bathroom.")
    await world.say(world.mention("hello?"))
    first, second = backend.received
    assert second.at - first.at < 2
    assert world.sent() == ["Sorry, I was in the bathroom."]


async def test_slow_backend_times_out_retries_then_apologises(start, backend):
    world = await start(request_timeout=0.2, timeout_margin=0.1)
    backend.queue(Answer(delay=2), Answer(delay=2))
    await world.say(world.mention("still there?"))
    assert len(backend.received) == 2
    assert world.sent() == [lines.APOLOGY]


async def test_backend_down_apologises(start):
    with socket.socket() as sock:  # a loopback port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    world = await start(api_url=f"http://127.0.0.1:{port}")
    await world.say(world.mention("anyone home?"))
    assert world.sent() == [lines.APOLOGY]


async def test_rejected_input_is_not_retried(start, backend):
    world = await start()
    backend.queue(Answer(status=413, body={"error": {"code": "too_long", "message": "message too long"}}))
    await world.say(world.mention("blah " * 50))
    assert len(backend.received) == 1
    assert world.sent() == [lines.TOO_MUCH]


# --- who, where, how often --------------------------------------------------------------------


async def test_cooldown_sends_one_notice_then_stays_quiet(start, backend):
    world = await start(cooldown=60)
    for _ in range(3):
        await world.say(world.mention("again!"))
    await world.say(world.mention("my turn"), member=world.ross)
    assert len(backend.received) == 2  # Monica once, Ross once
    assert world.sent()[0] == DEFAULT_REPLY
    assert world.sent()[1].startswith("Whoa, one sarcastic remark at a time")
    assert world.sent()[2] == DEFAULT_REPLY
    assert len(world.sent()) == 3


async def test_block_and_allow_lists(start, backend):
    world = await start()
    world.bot.options = chandler.Options(cooldown=0, blocked_users={world.ross.id})
    await world.say(world.mention("hi"), member=world.ross)
    assert backend.received == []

    world.bot.options = chandler.Options(cooldown=0, allowed_channels={world.channel.id + 1})
    await world.say(world.mention("hi"))
    assert backend.received == []

    role = fake_discord.make_role("Central Perk regulars", world.channel.guild)
    await dpytest.add_role(world.monica, role)
    world.bot.options = chandler.Options(cooldown=0, allowed_roles={role.id})
    await world.say(world.mention("hi"), member=world.ross)
    await world.say(world.mention("hi"))
    assert [r.json["user"]["id"] for r in backend.received] == [str(world.monica.id)]


# --- slash commands -------------------------------------------------------------------------


class StandInInteraction:
    """Discord's side of an interaction: what the command callbacks use of discord.Interaction."""

    def __init__(
        self, world: World, user: Any, channel: Any, permissions: discord.Permissions, message: discord.Message | None = None
    ) -> None:
        self.client, self.user, self.channel, self.permissions = world.bot, user, channel, permissions
        self.id, self.message, self.channel_id = factories.make_id(), message, channel.id
        self.guild = getattr(channel, "guild", None)
        self.calls: list[tuple[str, float, Any, dict[str, Any]]] = []
        self.response = self._Part(self, "response")
        self.followup = self._Part(self, "followup")

    class _Part:
        def __init__(self, owner: "StandInInteraction", name: str) -> None:
            self.owner, self.name = owner, name

        def __getattr__(self, method: str) -> Any:
            async def record(content: Any = None, **kwargs: Any) -> discord.Message | None:
                self.owner.calls.append((f"{self.name}.{method}", time.monotonic(), content, kwargs))
                if kwargs.get("wait"):  # a follow-up Discord returns: a message of the bot's in the channel
                    return await self.owner.channel.send(content, allowed_mentions=kwargs["allowed_mentions"], view=kwargs["view"])
                return None

            return record

    def names(self) -> list[str]:
        return [name for name, *_ in self.calls]


def interaction(
    world: World, user: Any = None, channel: Any = None, message: discord.Message | None = None, **permissions: bool
) -> StandInInteraction:
    return StandInInteraction(world, user or world.monica, channel or world.channel, discord.Permissions(**permissions), message)


async def test_slash_chandler_defers_then_follows_up_visibly(start, backend):
    world = await start()
    backend.reply_with("I'm Chandler. I make jokes when I'm uncomfortable.")
    act = interaction(world)
    await world.bot.tree.get_command("chandler").callback(act, message="  who are you?  ")

    assert act.names() == ["response.defer", "followup.send"]
    (_, deferred_at, _, defer_kwargs), (_, _, content, send_kwargs) = act.calls
    assert defer_kwargs == {"thinking": True}  # visible, not ephemeral
    assert deferred_at < backend.received[0].at  # deferred before the slow part
    assert backend.received[0].json == {
        "channel_id": str(world.channel.id),
        "user": {"id": str(world.monica.id), "name": world.monica.display_name},
        "message": "who are you?",
        "stream": True,
    }
    assert backend.received[0].headers["Idempotency-Key"] == str(act.id)
    assert content == "I'm Chandler. I make jokes when I'm uncomfortable."
    assert pings_nobody(send_kwargs["allowed_mentions"].to_dict())
    assert not send_kwargs.get("ephemeral")
    assert world.custom_id(world.payloads[0]) == f"chandler:again:{world.monica.id}"  # no message to point at


async def test_slash_chandler_streams_and_its_reply_takes_another_one_and_ratings(start, backend):
    world = await start(edit_interval=0.1)
    backend.queue(streamed("Work was fine. Could the coffee BE any weaker?", pieces=3, every=0.05))
    act = interaction(world)
    await world.bot.tree.get_command("chandler").callback(act, message="how was work?")
    assert act.names() == ["response.defer", "followup.send"]  # posted once, then grown by edits
    assert world.edits and world.shown() == ["Work was fine. Could the coffee BE any weaker?"]
    assert world.custom_id(world.edits[-1][2]) == f"chandler:again:{world.monica.id}"

    [reply_id] = world.posted
    await react(world, world.ross, reply_id, "👍")
    [feedback] = backend.requests("/v1/feedback")
    assert feedback.json["reply"] == "Work was fine. Could the coffee BE any weaker?"

    backend.reply_with("I'm sorry, I was just thinking about coffee.")
    pressed = await press(world, world.edits[-1][2], world.monica, message_id=reply_id)
    assert pressed.names() == ["response.defer"]
    assert backend.requests("/v1/chat")[-1].json == {
        "channel_id": str(world.channel.id),
        "user": {"id": str(world.monica.id), "name": world.monica.display_name},
        "regenerate": True,
        "stream": True,
    }
    assert world.shown() == ["I'm sorry, I was just thinking about coffee."]  # the same message, edited
    assert world.custom_id(world.edits[-1][2]) == f"chandler:again:{world.monica.id}"
    assert len(world.payloads) == 1


@pytest_asyncio.fixture
async def discord_api(monkeypatch):
    async with DiscordInteractions() as api:
        monkeypatch.setattr(discord.http.Route, "BASE", api.base)
        yield api


async def test_slash_chandler_through_discords_own_follow_up_code(start, backend, discord_api):
    world = await start(edit_interval=0.1)
    session = world.bot.http._HTTPClient__session = aiohttp.ClientSession()  # dpytest's HTTP client has none
    backend.queue(streamed("Work was fine. Could the coffee BE any weaker?", pieces=3, every=0.05))
    act = discord_api.slash_command(world.bot._connection, world.channel, world.monica, message="how was work?")
    try:
        await world.bot.tree.get_command("chandler").callback(act, message="how was work?")
    finally:
        await session.close()

    callback, posted, *edits = discord_api.calls
    assert (callback.method, callback.path, callback.json) == ("POST", f"/api/v10/interactions/{act.id}/{TOKEN}/callback", {"type": 5})
    follow_ups = f"/api/v10/webhooks/{world.bot.user.id}/{TOKEN}"
    assert (posted.method, posted.path, posted.query.get("wait")) == ("POST", follow_ups, "1")
    assert posted.json["content"] == "Work was fine."  # posted at its first words
    [message_id] = discord_api.messages
    assert edits and all((e.method, e.path) == ("PATCH", f"{follow_ups}/messages/{message_id}") for e in edits)
    assert edits[-1].json["content"] == "Work was fine. Could the coffee BE any weaker?"
    assert edits[-1].json["components"][0]["components"][0]["custom_id"] == f"chandler:again:{world.monica.id}"
    assert all(c.json["allowed_mentions"] == {"parse": []} for c in (posted, *edits))
    assert world.bot.replies[int(message_id)] == (world.channel.id, "Work was fine. Could the coffee BE any weaker?")  # rateable
    assert world.payloads == []  # nothing went through the channel's own endpoint


async def test_slash_chandler_apologises_when_backend_is_busy(start, backend):
    world = await start(max_retry_wait=0)
    backend.queue(busy(), busy())
    act = interaction(world)
    await world.bot.tree.get_command("chandler").callback(act, message="hi")
    assert act.names() == ["response.defer", "followup.send"]
    assert act.calls[1][2] == lines.APOLOGY


async def test_slash_chandler_cooldown_is_ephemeral(start, backend):
    world = await start(cooldown=60)
    command = world.bot.tree.get_command("chandler").callback
    await command(interaction(world), message="one")
    act = interaction(world)
    await command(act, message="two")
    assert len(backend.received) == 1
    assert act.names() == ["response.send_message"]
    assert act.calls[0][2].startswith("Whoa") and act.calls[0][3]["ephemeral"] is True


async def test_forget_with_manage_messages_clears_the_channel(start, backend):
    world = await start()
    act = interaction(world, manage_messages=True)
    await world.bot.tree.get_command("chandler-forget").callback(act)
    [request] = backend.received
    assert (request.method, request.path) == ("DELETE", f"/v1/channels/{world.channel.id}/context")
    assert request.headers["Authorization"] == "Bearer test-key"
    assert act.names() == ["response.defer", "followup.send"]
    assert act.calls[0][3] == {"ephemeral": True, "thinking": True}
    assert act.calls[1][2] == lines.FORGOTTEN


async def test_forget_without_permission_is_refused(start, backend):
    world = await start()
    act = interaction(world, send_messages=True)
    await world.bot.tree.get_command("chandler-forget").callback(act)
    assert backend.received == []
    assert act.names() == ["response.send_message"]
    assert act.calls[0][2] == lines.FORGET_DENIED and act.calls[0][3]["ephemeral"] is True


async def test_forget_in_a_dm_needs_no_permission(start, backend):
    world = await start()
    dm = await world.monica.create_dm()
    act = interaction(world, channel=dm)
    await world.bot.tree.get_command("chandler-forget").callback(act)
    assert [r.path for r in backend.received] == [f"/v1/channels/{dm.id}/context"]
    assert act.calls[-1][2] == lines.FORGOTTEN


async def test_forget_reports_backend_failure(start, backend):
    world = await start()
    backend.queue(Answer(status=500, body={"error": {"code": "internal", "message": "boom"}}))
    act = interaction(world, manage_messages=True)
    await world.bot.tree.get_command("chandler-forget").callback(act)
    assert act.calls[-1][2] == lines.APOLOGY


# --- configuration and logging ----------------------------------------------------------------


def test_missing_token_exits_2_with_one_line():
    env = {k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN"}
    command = [sys.executable, "-m", "discord_bot"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert "DISCORD_TOKEN" in done.stderr and "Traceback" not in done.stderr


def test_config_from_env():
    config = from_env(
        {
            "DISCORD_TOKEN": "sekrit-123",
            "CHANDLER_API_URL": "http://backend:8000/",
            "BLOCKED_USER_IDS": "1, 2",
            "ALLOWED_CHANNEL_IDS": "3",
            "CHANDLER_COOLDOWN": "2.5",
            "CHANDLER_REQUEST_TIMEOUT": "30",
            "DEV_GUILD_ID": "42",
            "LOG_LEVEL": "debug",
            "ALLOWED_ROLE_IDS": "",  # empty: unset, as in the cluster's ConfigMap
        }
    )
    assert config.api_url == "http://backend:8000" and config.api_key is None and config.log_level == "DEBUG"
    assert config.options.blocked_users == {1, 2} and config.options.allowed_channels == {3}
    assert config.options.allowed_roles == frozenset()
    assert config.options.cooldown == 2.5 and config.options.dev_guild_id == 42
    # the bot outwaits the backend: its request timeout plus the history read and commit around it
    assert config.options.timeout == 30 + config.options.timeout_margin > 30
    assert "sekrit-123" not in repr(config) and config.token.get_secret_value() == "sekrit-123"
    with pytest.raises(ConfigError, match="ALLOWED_ROLE_IDS"):
        from_env({"DISCORD_TOKEN": "tok", "ALLOWED_ROLE_IDS": "admins"})
    with pytest.raises(ConfigError, match="CHANDLER_COOLDOWN"):
        from_env({"DISCORD_TOKEN": "tok", "CHANDLER_COOLDOWN": "-1"})


def test_settings_read_the_process_environment(monkeypatch):
    monkeypatch.setenv("DISCORD_TOKEN", "sekrit-123")
    monkeypatch.setenv("ALLOWED_USER_IDS", "4,5")
    monkeypatch.setenv("CHANDLER_COOLDOWN", "")
    config = from_env()
    assert config.options.allowed_users == {4, 5} and config.options.cooldown == 5.0


async def test_contents_only_logged_at_debug(start, backend, caplog):
    world = await start()
    backend.reply_with("PIVOT reply text")
    with caplog.at_level("INFO", logger="discord_bot"):
        await world.say(world.mention("secret sofa plans"))
    assert caplog.records  # it does log the exchange at INFO ...
    assert "secret sofa plans" not in caplog.text and "PIVOT" not in caplog.text  # ... but not what was said
    caplog.clear()
    with caplog.at_level("DEBUG", logger="discord_bot"):
        await world.say(world.mention("secret sofa plans"))
    assert "secret sofa plans" in caplog.text


def test_token_is_redacted_from_logs():
    code = (
        "import logging; from discord_bot.__main__ import setup_logging;"
        "setup_logging('DEBUG', 'tok-123'); logging.getLogger('discord.http').debug('auth %s', 'Bot tok-123')"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "auth Bot [redacted]" in done.stderr and "tok-123" not in done.stderr


# --- reply chains -----------------------------------------------------------------------------


async def reply_to(world: World, target: discord.Message, text: str, member: Any = None, ping: bool = False) -> None:
    """A Discord reply to `target`, as the gateway sends it: the replied-to message comes along."""
    author = member or world.monica
    data = factories.make_message_dict(world.channel, author, content=text, mentions=[target.author] if ping else [], type=19)
    data["message_reference"] = {"message_id": target.id, "channel_id": target.channel.id, "guild_id": target.guild.id}
    data["referenced_message"] = {**factories.dict_from_message(target), "channel_id": target.channel.id, "timestamp": None}
    fake_discord.get_state().parse_message_create(data)
    await dpytest.run_all_events()


async def test_reply_to_the_bot_without_a_mention_gets_an_answer(start, backend):
    world = await start()
    await world.say(world.mention("how was work?"))
    bots_reply = dpytest.get_message()
    backend.reply_with("Oh, you know, the usual: transponsters.")
    await reply_to(world, bots_reply, "what do you even do?")  # ping off

    chat = backend.requests("/v1/chat")
    assert len(chat) == 2
    assert chat[1].json["message"] == "what do you even do?"
    assert chat[1].json["channel_id"] == str(world.channel.id)  # the same conversation
    assert world.sent()[-1] == "Oh, you know, the usual: transponsters."

    await reply_to(world, bots_reply, "and with the ping on?", ping=True)
    assert len(backend.requests("/v1/chat")) == 3


async def test_reply_to_someone_else_is_not_for_the_bot(start, backend):
    world = await start()
    rosss = await world.say("We were on a break!", member=world.ross)
    await reply_to(world, rosss, "no you were not")
    assert backend.received == []


# --- streamed replies -------------------------------------------------------------------------


async def test_streamed_reply_grows_by_at_most_one_edit_per_second(start, backend):
    world = await start()  # edit_interval: 1 s
    text = "Hi, I'm Chandler. I make jokes when I'm uncomfortable, which is, let me check, always."
    backend.queue(streamed(text, pieces=8, every=0.3))  # about 2.4 s of stream
    began = time.monotonic()
    await world.say(world.mention("who are you?"))
    ended = time.monotonic()

    [(message_id, (posted_at, first_words))] = world.posted.items()
    assert text.startswith(first_words) and len(first_words) < len(text) / 4  # posted at its first words
    assert posted_at < ended - 1  # ... well before the stream ended
    times = [posted_at] + [at for at, _, _ in world.edits]
    assert {mid for _, mid, _ in world.edits} == {message_id}
    assert all(b - a >= 0.95 for a, b in zip(times, times[1:]))  # at most one edit per second, the last one too
    assert 2 <= len(world.edits) <= math.ceil(ended - began)
    assert world.shown() == [text]  # the last edit shows the backend's whole reply
    last = world.edits[-1][2]
    assert world.custom_id(last).startswith("chandler:again:")  # the button comes with the last edit
    assert all(pings_nobody(p["allowed_mentions"]) for p in world.payloads + [p for _, _, p in world.edits])


async def test_long_stream_continues_in_new_messages(start, backend):
    world = await start(edit_interval=0.1)
    sentence = "I'm not great at the advice, can I interest you in a sarcastic comment? "
    text = (sentence * 60).strip()  # about 4,300 characters
    backend.queue(streamed(text, pieces=12, every=0.02))
    await world.say(world.mention("any advice?"))

    shown = world.shown()
    assert len(shown) == 3 and all(len(m) <= 2000 for m in shown)
    assert " ".join(shown) == text
    with_button = [p for _, _, p in world.edits if world.custom_id(p)] + [p for p in world.payloads if world.custom_id(p)]
    assert len(with_button) == 1 and with_button[0]["content"] == shown[-1]  # one button, under the last message
    assert all(pings_nobody(p["allowed_mentions"]) for p in world.payloads + [p for _, _, p in world.edits])


async def test_reply_in_one_piece_is_just_posted(start, backend):
    world = await start()
    backend.reply_with("Could this BE any more whole?")
    await world.say(world.mention("best of four, please"))
    assert world.sent() == ["Could this BE any more whole?"] and world.edits == []
    assert world.custom_id(world.payloads[0]).startswith("chandler:again:")


async def test_quote_shows_its_episode(start, backend):
    world = await start()
    backend.reply_with("I'm not great at the advice.", source={"kind": "quote", "season": 1, "episode": 2})
    await world.say(world.mention("advice?"))
    assert world.sent() == ["I'm not great at the advice.\n-# Friends S1E2"]


async def test_broken_stream_finishes_with_what_the_backend_committed(start, backend):
    world = await start(edit_interval=0.1)
    committed = "Could I BE any more committed?"
    deltas = [(0.0, {"delta": "Could I "}), (0.05, {"delta": "BE any"})]
    backend.queue(Answer(events=deltas, body=final(committed), done=False))  # the connection drops midway
    await world.say(world.mention("still there?"))

    first, again = backend.requests("/v1/chat")
    assert again.headers["Idempotency-Key"] == first.headers["Idempotency-Key"]  # the same turn, asked again
    assert world.shown() == [committed]
    assert len(backend.committed) == 1


async def test_stream_error_without_a_commit_ends_with_the_apology(start, backend):
    world = await start(edit_interval=0.1)
    events = [(0.0, {"delta": "Could I "}), (0.0, {"error": {"code": "timeout", "message": "no reply in 60s"}})]
    backend.queue(Answer(events=events, commit=False), Answer(status=500, body={"error": {"code": "internal", "message": "x"}}))
    await world.say(world.mention("still there?"))
    assert world.shown() == [lines.APOLOGY]
    assert world.edits[-1][2]["components"] == []  # no button under an apology


async def test_retry_resends_the_same_idempotency_key(start, backend):
    world = await start()
    backend.queue(busy(retry_after="0"))
    asked = await world.say(world.mention("hello?"))
    keys = [r.headers["Idempotency-Key"] for r in backend.requests("/v1/chat")]
    assert keys == [str(asked.id), str(asked.id)]
    assert world.sent() == [DEFAULT_REPLY]


# --- "another one" ------------------------------------------------------------------------------


async def press(
    world: World, payload: dict[str, Any], user: Any, message_id: int | None = None, **permissions: bool
) -> StandInInteraction:
    """Presses the button in `payload` (a post, or with `message_id` an edit of that message) the way
    discord.py dispatches it: the custom_id is matched against the dynamic items registered at
    start-up, which rebuild the button from it."""
    custom_id = world.custom_id(payload)
    store = world.bot._connection._view_store
    [(pattern, item_class)] = [(p, c) for p, c in store._dynamic_items.items() if p.fullmatch(custom_id)]
    message_id = message_id or next(i for i, (_, c) in world.posted.items() if c == payload["content"])
    message = world.bot._connection._get_message(message_id)
    act = interaction(world, user=user, message=message, **permissions)
    item = await item_class.from_custom_id(act, None, pattern.fullmatch(custom_id))
    await item.callback(act)
    return act


async def test_another_one_pressed_by_the_asker_replaces_the_reply(start, backend):
    world = await start(edit_interval=0.1)
    asked = await world.say(world.mention("how was work?"))
    [reply] = world.payloads
    assert world.custom_id(reply) == f"chandler:again:{world.monica.id}:{asked.id}"

    backend.queue(streamed("Could work BE any more boring?", pieces=3, every=0.05))
    act = await press(world, reply, world.monica)

    assert act.names() == ["response.defer"]
    again = backend.requests("/v1/chat")[-1]
    assert again.json == {
        "channel_id": str(world.channel.id),
        "user": {"id": str(world.monica.id), "name": world.monica.display_name},
        "regenerate": True,
        "stream": True,
    }
    assert again.headers["Idempotency-Key"] == str(act.id)
    assert world.shown() == ["Could work BE any more boring?"]  # the same message, edited
    assert world.custom_id(world.edits[-1][2]) == world.custom_id(reply)  # and its button is back
    assert len(world.payloads) == 1


async def test_another_one_pressed_by_someone_else_is_refused(start, backend):
    world = await start()
    await world.say(world.mention("how was work?"))
    [reply] = world.payloads
    act = await press(world, reply, world.ross)
    assert act.names() == ["response.send_message"]
    assert act.calls[0][2] == lines.NOT_YOURS and act.calls[0][3]["ephemeral"] is True
    assert len(backend.requests("/v1/chat")) == 1 and world.edits == []

    act = await press(world, reply, world.ross, manage_messages=True)  # a moderator may
    assert act.names() == ["response.defer"]
    assert backend.requests("/v1/chat")[-1].json["user"]["id"] == str(world.ross.id)  # who asked for another one
    assert world.custom_id(world.edits[-1][2]) == world.custom_id(reply)  # the button stays Monica's


async def test_another_one_only_on_the_latest_reply(start, backend):
    world = await start()
    backend.reply_with("One.")
    backend.reply_with("Two.")
    await world.say(world.mention("one"))
    await world.say(world.mention("two"))
    older, newer = world.payloads
    act = await press(world, older, world.monica)
    assert act.calls[0][2] == lines.NOT_LATEST
    assert len(backend.requests("/v1/chat")) == 2
    assert (await press(world, newer, world.monica)).names() == ["response.defer"]


async def test_another_one_when_the_question_is_gone(start, backend):
    world = await start()
    asked = await world.say(world.mention("how was work?"))
    await asked.delete()
    act = await press(world, world.payloads[0], world.monica)
    assert act.calls[0][2] == lines.GONE
    assert len(backend.requests("/v1/chat")) == 1


# --- reactions as feedback --------------------------------------------------------------------


async def react(world: World, user: Any, message_id: int, emoji: str, author: Any = None) -> None:
    """A MESSAGE_REACTION_ADD from the gateway (dpytest's own lacks fields discord.py 2.7 reads);
    `author` fills message_author_id, which Discord sends and older events may lack."""
    data = {"message_id": message_id, "channel_id": world.channel.id, "guild_id": world.channel.guild.id,
            "user_id": user.id, "emoji": {"id": None, "name": emoji}, "type": 0, "burst": False}
    if isinstance(user, discord.Member):
        data["member"] = factories.dict_from_member(user)
    if author is not None:
        data["message_author_id"] = author.id
    fake_discord.get_state().parse_message_reaction_add(data)
    await dpytest.run_all_events()


async def test_reactions_on_a_reply_reach_the_feedback_endpoint(start, backend):
    world = await start()
    backend.reply_with("I'm not great at the advice.", source={"kind": "quote", "season": 1, "episode": 2})
    await world.say(world.mention("advice?"))
    [reply_id] = world.posted
    await react(world, world.ross, reply_id, "👍", author=world.bot.user)
    await react(world, world.monica, reply_id, "👎")
    await react(world, world.monica, reply_id, "😂")  # not a rating

    up, down = backend.requests("/v1/feedback")
    assert up.json == {"channel_id": str(world.channel.id), "reply": "I'm not great at the advice.", "rating": 1, "user": {"id": str(world.ross.id)}}
    assert (down.json["rating"], down.json["user"]) == (-1, {"id": str(world.monica.id)})
    assert up.headers["Authorization"] == "Bearer test-key"
    assert len(world.payloads) == 1  # rating posts nothing


async def test_reactions_after_a_restart_read_the_reply_from_discord(start, backend):
    world = await start()
    data = factories.make_message_dict(world.channel, world.bot.user, content="Could I BE any more restarted?\n-# Friends S3E5")
    data["components"] = [{"type": 1, "components": [{"type": 2, "style": 2, "label": "Another one", "custom_id": "chandler:again:1:2"}]}]
    on_discord = fake_discord._cur_config.messages.setdefault(world.channel.id, [])  # not in this process's cache
    plain = factories.make_message_dict(world.channel, world.bot.user, content=lines.APOLOGY)  # the bot's, no button
    on_discord += [data, plain]
    await react(world, world.monica, data["id"], "👍")
    await react(world, world.monica, plain["id"], "👍")
    [feedback] = backend.requests("/v1/feedback")
    assert feedback.json["reply"] == "Could I BE any more restarted?"


async def test_reactions_that_are_not_feedback_store_nothing(start, backend):
    world = await start()
    own = await world.say("a message of Monica's")
    await react(world, world.ross, own.id, "👍")  # not the bot's message
    await react(world, world.ross, own.id, "👍", author=world.monica)
    await world.say(f"<@{world.bot.user.id}>")
    [nudge_id] = world.posted
    await react(world, world.monica, nudge_id, "👍")  # the bot's, but not a reply from the backend
    await world.say(world.mention("hi"))
    reply_id = list(world.posted)[-1]
    await react(world, world.bot.user, reply_id, "👍")  # the bot's own reaction
    await world.bot._connection._get_message(reply_id).delete()
    await react(world, world.monica, reply_id, "👍")  # a deleted reply
    await react(world, world.monica, factories.make_id(), "👍")  # a message Discord does not have
    assert backend.requests("/v1/feedback") == []


async def test_feedback_the_backend_refuses_breaks_nothing(start, backend):
    world = await start()
    await world.say(world.mention("hi"))
    [reply_id] = world.posted
    backend.queue(Answer(status=404, body={"error": {"code": "not_found", "message": "no such reply in this channel"}}))
    await react(world, world.monica, reply_id, "👍")
    await react(world, world.ross, reply_id, "👎")
    assert [r.json["rating"] for r in backend.requests("/v1/feedback")] == [1, -1]  # refused once, not retried; the next goes through
    assert len(world.payloads) == 1


# --- threads, start-up, bounded memory ----------------------------------------------------------


def make_thread(world: World, name: str) -> discord.Thread:
    """A public thread under the test channel (dpytest has no threads: the gateway event is built here)."""
    thread_id = factories.make_id()
    fake_discord.get_state().parse_thread_create({
        "id": thread_id, "guild_id": world.channel.guild.id, "parent_id": world.channel.id, "owner_id": world.monica.id,
        "name": name, "type": 11, "message_count": 0, "member_count": 1, "rate_limit_per_user": 0,
        "thread_metadata": {"archived": False, "auto_archive_duration": 60, "archive_timestamp": "2026-01-01T00:00:00+00:00", "locked": False},
    })
    return world.channel.guild.get_thread(thread_id)


async def say_in_thread(world: World, thread: discord.Thread, text: str) -> None:
    data = factories.make_message_dict(thread, world.monica, content=text, mentions=[world.bot.user], guild_id=thread.guild.id)
    data["member"] = factories.dict_from_member(world.monica)
    fake_discord.get_state().parse_message_create(data)
    await dpytest.run_all_events()


async def test_mention_in_a_thread_keeps_the_threads_own_context(start, backend):
    world = await start()
    thread = make_thread(world, "Central Perk")
    await say_in_thread(world, thread, world.mention("in a thread now"))
    [request] = backend.requests("/v1/chat")
    assert request.json["channel_id"] == str(thread.id) != str(world.channel.id)
    assert request.json["message"] == "in a thread now"
    assert world.sent() == [DEFAULT_REPLY]
    world.bot.options = chandler.Options(cooldown=0, blocked_channels={world.channel.id})  # a thread's parent counts
    await say_in_thread(world, thread, world.mention("and now?"))
    assert len(backend.requests("/v1/chat")) == 1


async def test_the_button_is_registered_at_start_up(start):
    world = await start()  # nothing sent yet: a button from before a restart must already resolve
    store = world.bot._connection._view_store
    for custom_id in (f"chandler:again:{world.monica.id}:{factories.make_id()}", f"chandler:again:{world.monica.id}"):
        assert [c for p, c in store._dynamic_items.items() if p.fullmatch(custom_id)] == [chandler.AnotherOne]


def test_recent_keeps_only_the_newest_keys():
    seen = chandler.Recent(2)
    seen[1], seen[2] = "a", "b"
    seen[1] = "a again"  # setting a key makes it the newest
    seen[3] = "c"
    assert list(seen.items()) == [(1, "a again"), (3, "c")]


async def test_per_user_and_per_message_maps_are_bounded(start, backend):
    world = await start(remembered=1)
    await world.say(world.mention("hi"))
    await world.say(world.mention("hi"), member=world.ross)
    assert list(world.bot.cooldowns) == [world.ross.id]
    assert len(world.bot.replies) == 1


async def test_another_one_the_backend_cannot_give_leaves_the_reply_as_it_was(start, backend):
    world = await start()
    await world.say(world.mention("how was work?"))
    backend.queue(busy(), busy())
    act = await press(world, world.payloads[0], world.monica)
    assert act.names() == ["response.defer", "followup.send"]
    assert act.calls[1][2] == lines.APOLOGY and act.calls[1][3]["ephemeral"] is True
    assert world.edits == [] and world.shown() == [DEFAULT_REPLY]


async def test_another_one_after_the_channel_moved_on_says_so(start, backend):
    world = await start()
    await world.say(world.mention("how was work?"))
    backend.queue(Answer(status=409, body={"error": {"code": "conflict", "message": "the channel has moved on"}}))
    act = await press(world, world.payloads[0], world.monica)
    assert act.calls[-1][2] == lines.NOT_LATEST and act.calls[-1][3]["ephemeral"] is True
    assert len(backend.requests("/v1/chat")) == 2 and world.edits == []  # refused once, not retried


def test_bot_imports_only_what_its_image_installs():
    code = "import sys, discord_bot.__main__; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    loaded = set(done.stdout.split())
    assert {"discord", "aiohttp", "pydantic_settings"} <= loaded
    assert not loaded & {"torch", "transformers", "ray", "redis", "serve", "data", "train", "playwright"}
