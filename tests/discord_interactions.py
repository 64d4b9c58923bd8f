"""Discord's interaction endpoints on loopback: the callback that answers an interaction, and the
follow-up webhook with its edits. discord.py's webhook adapter sends a real `discord.Interaction`'s
calls here (dpytest has no interactions), so the bot's slash command runs on discord.py's own
follow-up code. Tests read back every call it received.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import discord
from aiohttp import web
from aiohttp.test_utils import TestServer
from discord.ext.test import factories

TOKEN = "interaction-token"


def json_response(body: dict[str, Any], status: int = 200) -> web.Response:
    """JSON as Discord sends it: discord.py reads a body as JSON only under exactly this content type."""
    return web.Response(body=json.dumps(body, default=str).encode(), status=status, headers={"Content-Type": "application/json"})


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, str]
    json: dict[str, Any]


class DiscordInteractions:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.messages: dict[str, dict[str, Any]] = {}  # follow-up message id → its data as Discord keeps it
        self.channel: discord.abc.GuildChannel | None = None
        self.author: discord.ClientUser | None = None
        app = web.Application()
        app.router.add_post("/api/v10/interactions/{id}/{token}/callback", self._callback)
        app.router.add_post("/api/v10/webhooks/{app}/{token}", self._follow_up)
        app.router.add_patch("/api/v10/webhooks/{app}/{token}/messages/{message}", self._edit)
        self.server = TestServer(app)

    async def __aenter__(self) -> DiscordInteractions:
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.close()

    @property
    def base(self) -> str:
        return str(self.server.make_url("/api/v10"))

    def slash_command(self, state: Any, channel: discord.TextChannel, member: discord.Member, **options: str) -> discord.Interaction:
        """A /chandler interaction as Discord delivers it over the gateway."""
        self.channel, self.author = channel, state.user
        data = {
            "id": str(factories.make_id()), "application_id": str(state.user.id), "type": 2, "token": TOKEN, "version": 1,
            "guild_id": str(channel.guild.id), "channel": {"id": str(channel.id), "type": 0, "guild_id": str(channel.guild.id)},
            "member": {**factories.dict_from_member(member), "permissions": "0"}, "attachment_size_limit": 8 * 2**20,
            "data": {"id": str(factories.make_id()), "name": "chandler", "type": 1,
                     "options": [{"name": k, "type": 3, "value": v} for k, v in options.items()]},
        }
        return discord.Interaction(data=data, state=state)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        body = await request.json()
        self.calls.append(Call(request.method, request.path, dict(request.query), body))
        return body

    async def _callback(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        loading = body["type"] == 5  # a deferred reply: "thinking…"
        return json_response({"interaction": {"id": request.match_info["id"], "type": 2, "response_message_loading": loading},
                                  "resource": {"type": body["type"]}})

    async def _follow_up(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        message = factories.make_message_dict(self.channel, self.author, content=body.get("content"), webhook_id=self.author.id)
        message["components"] = body.get("components", [])
        self.messages[str(message["id"])] = message
        return json_response(message)

    async def _edit(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        message = self.messages.get(request.match_info["message"])
        if message is None:
            return json_response({"message": "Unknown Message", "code": 10008}, status=404)
        message.update({k: body[k] for k in ("content", "components") if k in body})
        return json_response(message)
