"""The slash commands: /chandler (its reply streamed into follow-ups, with the button) and /chandler-forget."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from .buttons import AnotherOne
from .lines import COOLDOWN, EMPTY, FORGET_DENIED, NOT_ALLOWED
from .writer import NO_PINGS, Followups, ReplyWriter

if TYPE_CHECKING:
    from .bot import ChandlerBot


def _refusal(interaction: discord.Interaction[ChandlerBot]) -> str | None:
    bot = interaction.client
    if not bot.permitted(interaction.user, interaction.channel):
        return NOT_ALLOWED
    wait, _ = bot.cooldown_left(interaction.user.id)
    return COOLDOWN.format(seconds=math.ceil(wait)) if wait else None


@app_commands.command(name="chandler", description="Say something to Chandler Bing")
@app_commands.describe(message="What you want to tell him")
async def chandler_command(interaction: discord.Interaction[ChandlerBot], message: str) -> None:
    refusal = _refusal(interaction)
    if refusal:
        await interaction.response.send_message(refusal, ephemeral=True, allowed_mentions=NO_PINGS)
        return
    await interaction.response.defer(thinking=True)
    text, bot = message.strip(), interaction.client
    writer = ReplyWriter(Followups(interaction), bot.options.edit_interval)
    failed = EMPTY
    if text:
        turn = bot.turn(interaction.channel_id, interaction.user, text)
        failed = await bot.converse(turn, str(interaction.id), writer, AnotherOne.view(interaction.user.id))
    if failed:
        await writer.finish(failed)


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
