"""Command ``bot``: the responder in the group, a Telegram bot that takes part in the chat it learned from.

It long-polls Telegram's Bot API (python-telegram-bot) and talks to ``cookiebaker serve`` over its webhook:
messages it answers go to ``/webhook/response`` (the chat's SFW setting picks the responder), messages it only
sees go to ``/webhook/turn`` (the context of later answers, with their speakers), ``/forget`` to
``/webhook/forget``. The token comes from TELEGRAM_BOT_TOKEN and is never logged; chat text never is either.
"""

from __future__ import annotations

import logging
import os
import signal

from pydantic import Field, field_validator

from cookiebaker.config import StageConfig
from cookiebaker.errors import ConfigError, ServiceError
from cookiebaker.messages import canonical_sender_ids

__all__ = ["BotConfig", "run"]

log = logging.getLogger(__name__)

TOKEN_VARIABLE = "TELEGRAM_BOT_TOKEN"


class BotConfig(StageConfig):
    service_url: str = "http://127.0.0.1:8000"
    """The responder service (``cookiebaker serve``); its API key from COOKIEBAKER_API_KEY."""
    service_timeout_seconds: float = Field(150, gt=0)
    """How long a reply may take before the bot gives up on it (no reply, a warning)."""
    base_url: str | None = None
    """The Bot API's URL up to the token (default Telegram's, https://api.telegram.org/bot); a local Bot API
    server's, or a test stand-in's."""
    sfw_default: bool = True
    """Whether a chat is answered by the SFW responder until an admin says ``/sfw off`` (kept in state_db)."""
    trigger_words: list[str] = Field(default_factory=list)
    """Words that make the bot answer in a group, as a mention does (whole words, any case)."""
    reply_probability: float = Field(0.0, ge=0, le=1)
    """In a group, the chance of answering a message nobody addressed to the bot (0: only when asked)."""
    cooldown_seconds: float = Field(10.0, ge=0)
    """In a group, the least time between two answers: a mention in it is answered when it ends, an unasked
    reply is not given."""
    debounce_seconds: float = Field(2.0, ge=0)
    """Wait this long after the last message of a burst before answering it (once, its last message)."""
    state_db: str = "bot/state.sqlite3"
    """SQLite file with each chat's SFW setting."""
    opt_out_sender_ids: list[str | int] = Field(default_factory=list)
    """People who did not consent (``user123`` or 123, as in pairs.privacy): their messages are never stored, sent
    or answered. params.yaml gives the pairs list here too, so the two cannot drift."""
    retry_seconds: float = Field(1.0, gt=0)
    """First wait after a network error towards Telegram (doubling up to five tries; a 429 waits as told)."""
    poll_timeout_seconds: int = Field(30, ge=0, le=50)
    """Long polling: how long one getUpdates call waits for messages."""
    seed: int | None = None
    """Seed of the chance replies (reply_probability); none: different in every run."""

    _canonical = field_validator("opt_out_sender_ids")(classmethod(lambda cls, v: canonical_sender_ids(v)))

    def canonical_opt_out(self) -> list[str]:
        return [str(value) for value in self.opt_out_sender_ids]


class _HideToken(logging.Filter):
    """The token is in every Bot API URL: no log record may show it, whichever library writes it."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.token in message:
            record.msg, record.args = message.replace(self.token, "<token>"), None
        return True


def _hide(token: str) -> None:
    hider = _HideToken(token)
    for handler in logging.getLogger().handlers:
        handler.addFilter(hider)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs every request's URL at INFO


def _application(config: BotConfig, token: str):  # noqa: ANN202
    from telegram import Update
    from telegram.ext import Application, TypeHandler

    from cookiebaker.bot.service import ServiceClient
    from cookiebaker.bot.state import ChatSettings
    from cookiebaker.bot.telegram import Responder

    responder = Responder(config, ServiceClient(config.service_url, config.service_timeout_seconds),
                          ChatSettings(config.state_db, config.sfw_default))
    builder = Application.builder().token(token).post_init(responder.started).post_stop(responder.stopping)
    if config.base_url:
        builder = builder.base_url(config.base_url)
    application = builder.build()
    application.add_handler(TypeHandler(Update, responder.on_update))

    async def failed(update: object, context) -> None:  # noqa: ANN001
        if update is None:  # fetching updates failed: python-telegram-bot tries again
            log.warning("polling Telegram: %s (trying again)", type(context.error).__name__)
        else:
            log.warning("an update was not handled: %s", type(context.error).__name__, exc_info=context.error)

    application.add_error_handler(failed)
    return application


def run(config: BotConfig) -> None:
    """Poll Telegram and answer until SIGINT or SIGTERM (then stop cleanly: open bursts are stored)."""
    from telegram.error import InvalidToken, NetworkError

    token = os.environ.get(TOKEN_VARIABLE, "").strip()
    if not token:
        raise ConfigError(f"set {TOKEN_VARIABLE} to the bot's token (from @BotFather): it is read from the "
                          "environment only")
    _hide(token)
    application = _application(config, token)
    try:
        application.run_polling(allowed_updates=["message", "edited_message"], timeout=config.poll_timeout_seconds,
                                stop_signals=(signal.SIGINT, signal.SIGTERM))
    except InvalidToken:
        raise ConfigError(f"Telegram refuses the token in {TOKEN_VARIABLE}: copy it again from @BotFather") from None
    except NetworkError as exc:
        raise ServiceError(f"cannot reach the Bot API at {config.base_url or 'api.telegram.org'} "
                         f"({type(exc).__name__})") from None
