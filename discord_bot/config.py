"""Settings for the Discord bot, read from the environment with pydantic-settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_API_URL = "http://127.0.0.1:8000"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message is one line for the operator."""


def _split_ids(value: Any) -> Any:
    return value.replace(",", " ").split() if isinstance(value, str) else value


Ids = Annotated[frozenset[int], NoDecode, BeforeValidator(_split_ids)]  # "1, 2 3" in the environment
Seconds = Annotated[float, Field(ge=0)]


class Options(BaseModel):
    """Who may talk to the bot, where, and how patiently it waits for the backend."""

    model_config = ConfigDict(frozen=True, validate_by_name=True, validate_by_alias=True)

    allowed_users: Ids = Field(frozenset(), validation_alias="ALLOWED_USER_IDS")
    blocked_users: Ids = Field(frozenset(), validation_alias="BLOCKED_USER_IDS")
    allowed_roles: Ids = Field(frozenset(), validation_alias="ALLOWED_ROLE_IDS")
    blocked_roles: Ids = Field(frozenset(), validation_alias="BLOCKED_ROLE_IDS")
    allowed_channels: Ids = Field(frozenset(), validation_alias="ALLOWED_CHANNEL_IDS")
    blocked_channels: Ids = Field(frozenset(), validation_alias="BLOCKED_CHANNEL_IDS")
    allow_dms: bool = Field(True, validation_alias="ALLOW_DMS")
    cooldown: Seconds = Field(5.0, validation_alias="CHANDLER_COOLDOWN")  # between two requests of one user; 0: off
    # The backend's own request timeout (the same variable configures it). The bot waits longer by
    # `timeout_margin`, the time the backend may spend reading history and committing around it,
    # so that it never gives up on (and resends) a request the backend is still going to answer.
    request_timeout: Annotated[float, Field(gt=0)] = Field(60.0, validation_alias="CHANDLER_REQUEST_TIMEOUT")
    timeout_margin: Seconds = Field(15.0, validation_alias="CHANDLER_TIMEOUT_MARGIN")
    retry_wait: Seconds = Field(1.0, validation_alias="CHANDLER_RETRY_WAIT")  # backoff before the one retry without Retry-After
    max_retry_wait: Seconds = Field(5.0, validation_alias="CHANDLER_MAX_RETRY_WAIT")  # cap on the backend's Retry-After
    edit_interval: Seconds = Field(1.0, validation_alias="CHANDLER_EDIT_INTERVAL")  # a streamed reply edits a message at most this often
    remembered: Annotated[int, Field(ge=1)] = Field(10_000, validation_alias="CHANDLER_REMEMBERED")  # entries per per-user / per-message map
    dev_guild_id: int | None = Field(None, validation_alias="DEV_GUILD_ID")  # sync slash commands to this guild only

    @property
    def timeout(self) -> float:
        """Seconds the bot waits for one backend call: the backend's worst case."""
        return self.request_timeout + self.timeout_margin


class Settings(BaseSettings, Options):
    """Everything `python -m discord_bot` reads: the options plus the token, the backend and logging."""

    model_config = SettingsConfigDict(frozen=True, env_ignore_empty=True, extra="ignore", validate_by_name=True)

    token: SecretStr = Field(validation_alias="DISCORD_TOKEN")
    api_url: Annotated[str, AfterValidator(lambda url: url.rstrip("/"))] = Field(DEFAULT_API_URL, validation_alias="CHANDLER_API_URL")
    api_key: SecretStr | None = Field(None, validation_alias="CHANDLER_API_KEY")
    log_level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(str.upper)] = Field("INFO", validation_alias="LOG_LEVEL")

    @property
    def options(self) -> Options:
        return Options.model_validate(self.model_dump(include=set(Options.model_fields)))


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    name = ".".join(str(part) for part in first["loc"][:1])
    if name == "DISCORD_TOKEN":
        return "DISCORD_TOKEN is not set: create a bot in the Discord developer portal and export its token"
    return f"{name}: {first['msg']} (got {str(first.get('input'))[:80]!r})"


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """The settings from the environment (or `env`); raises ConfigError with a one-line reason."""
    try:
        if env is None:
            return Settings()
        return Settings.model_validate({k: v for k, v in env.items() if v.strip()})
    except ValidationError as error:
        raise ConfigError(_one_line(error)) from None
