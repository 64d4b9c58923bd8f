"""Chandler's Discord bot: forwards mentions, replies, DMs and slash commands to the backend over HTTP."""

from .bot import ChandlerBot, create_bot
from .writer import split_message

__all__ = ["ChandlerBot", "create_bot", "split_message"]
