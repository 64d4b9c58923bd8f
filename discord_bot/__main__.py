"""`python -m discord_bot`: run the bot with its settings from the environment."""

import logging
import sys

import discord

from .bot import ChandlerBot
from .config import ConfigError, from_env

log = logging.getLogger("discord_bot")


class Redact(logging.Filter):
    """Blanks a secret out of every log line, whichever library wrote it."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if self.secret in text:
            record.msg, record.args = text.replace(self.secret, "[redacted]"), None
        return True


def setup_logging(level: str, *secrets: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for secret in filter(None, secrets):
        handler.addFilter(Redact(secret))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def main() -> int:
    try:
        config = from_env()
    except ConfigError as err:
        print(f"discord_bot: {err}", file=sys.stderr)
        return 2
    token, api_key = config.token.get_secret_value(), config.api_key.get_secret_value() if config.api_key else None
    setup_logging(config.log_level, token, api_key or "")
    log.info("backend %s, %s; waiting up to %gs per call", config.api_url, "with an API key" if api_key else "without an API key", config.timeout)
    bot = ChandlerBot(config.api_url, api_key, config.options)
    try:
        bot.run(token, log_handler=None)
    except discord.LoginFailure:
        log.error("Discord refused the token: check DISCORD_TOKEN")
        return 1
    except discord.PrivilegedIntentsRequired:
        log.error("enable the Message Content intent for this bot in the Discord developer portal (Bot tab)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
