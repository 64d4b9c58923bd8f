"""The "Another one" button under each reply. Its state (who asked, and which message: none for a
/chandler reply) lives in its custom_id, and the bot registers it as a dynamic item at start-up, so it
keeps working after a restart."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord

if TYPE_CHECKING:
    from .bot import ChandlerBot


class AnotherOne(discord.ui.DynamicItem[discord.ui.Button], template=r"chandler:again:(?P<asker>\d+)(?::(?P<question>\d+))?"):
    def __init__(self, asker: int, question: int | None) -> None:
        custom_id = f"chandler:again:{asker}" + (f":{question}" if question is not None else "")
        button = discord.ui.Button(label="Another one", emoji="🔁", style=discord.ButtonStyle.secondary, custom_id=custom_id)
        super().__init__(button)
        self.asker, self.question = asker, question

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /) -> AnotherOne:
        return cls(int(match["asker"]), int(match["question"]) if match["question"] else None)

    async def callback(self, interaction: discord.Interaction[ChandlerBot]) -> None:  # type: ignore[override]
        await interaction.client.another_one(interaction, self.asker, self.question)

    @classmethod
    def view(cls, asker: int, question: int | None = None) -> discord.ui.View:
        """The view to put under a reply to `asker`'s message `question` (None: their /chandler command)."""
        return discord.ui.View(timeout=None).add_item(cls(asker, question))
