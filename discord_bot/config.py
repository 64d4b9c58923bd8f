"""Settings for the Discord bot, read from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_API_URL = "http://127.0.0.1:8000"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message is one line for the operator."""


@dataclass(frozen=True)
class Options:
    """Who may talk to the bot, where, and how patiently it waits for the backend."""

    allowed_users: frozenset[int] = frozenset()
    blocked_users: frozenset[int] = frozenset()
    allowed_roles: frozenset[int] = frozenset()
    blocked_roles: frozenset[int] = frozenset()
    allowed_channels: frozenset[int] = frozenset()
    blocked_channels: frozenset[int] = frozenset()
    allow_dms: bool = True
    cooldown: float = 5.0  # seconds between two requests of one user; 0 turns it off
    timeout: float = 60.0  # seconds for one backend request
    retry_wait: float = 1.0  # backoff before the single retry when the backend gives no Retry-After
    max_retry_wait: float = 5.0  # cap on the backend's Retry-After
    dev_guild_id: int | None = None  # sync slash commands to this guild only (instant, for development)


@dataclass(frozen=True)
class Config:
    token: str = field(repr=False)
    api_url: str = DEFAULT_API_URL
    api_key: str | None = field(default=None, repr=False)
    options: Options = Options()
    log_level: str = "INFO"


def _ids(env: Mapping[str, str], name: str) -> frozenset[int]:
    raw = env.get(name, "").replace(",", " ").split()
    try:
        return frozenset(int(x) for x in raw)
    except ValueError:
        raise ConfigError(f"{name} must be a comma-separated list of numeric Discord ids") from None


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        value = float(env.get(name) or default)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false")


def from_env(env: Mapping[str, str] = os.environ) -> Config:
    """Build the configuration; raises ConfigError with a one-line reason."""
    token = env.get("DISCORD_TOKEN", "").strip()
    if not token:
        raise ConfigError("DISCORD_TOKEN is not set: create a bot in the Discord developer portal and export its token")
    guild = _ids(env, "DEV_GUILD_ID")
    if len(guild) > 1:
        raise ConfigError("DEV_GUILD_ID takes a single guild id")
    options = Options(
        allowed_users=_ids(env, "ALLOWED_USER_IDS"),
        blocked_users=_ids(env, "BLOCKED_USER_IDS"),
        allowed_roles=_ids(env, "ALLOWED_ROLE_IDS"),
        blocked_roles=_ids(env, "BLOCKED_ROLE_IDS"),
        allowed_channels=_ids(env, "ALLOWED_CHANNEL_IDS"),
        blocked_channels=_ids(env, "BLOCKED_CHANNEL_IDS"),
        allow_dms=_flag(env, "ALLOW_DMS", True),
        cooldown=_number(env, "CHANDLER_COOLDOWN", Options.cooldown),
        timeout=_number(env, "CHANDLER_TIMEOUT", Options.timeout),
        dev_guild_id=next(iter(guild), None),
    )
    log_level = (env.get("LOG_LEVEL") or "INFO").strip().upper()
    if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError("LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")
    return Config(
        token=token,
        api_url=(env.get("CHANDLER_API_URL") or DEFAULT_API_URL).rstrip("/"),
        api_key=env.get("CHANDLER_API_KEY") or None,
        options=options,
        log_level=log_level,
    )
