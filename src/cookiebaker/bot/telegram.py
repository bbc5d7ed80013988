"""The bot on Telegram (python-telegram-bot, long polling): messages in, the service's replies out.

Each chat has a :class:`Room`. A message the bot does not answer is stored in the service's history at once (the
context of later replies). A message it answers opens a burst: later messages of the chat join it until
``debounce_seconds`` pass without one (and, in a group, ``cooldown_seconds`` after the previous answer); then
the burst's earlier messages are stored and its last one is answered, once, with "typing" shown meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from cookiebaker.bot.policy import Incoming, answer_at, command_of, mentions, reason_to_answer, skipped, split_message
from cookiebaker.bot.service import ServiceClient, ServiceDown
from cookiebaker.bot.state import ChatSettings

if TYPE_CHECKING:
    from telegram import Message, Update
    from telegram.ext import Application, ContextTypes

    from cookiebaker.bot import BotConfig

log = logging.getLogger(__name__)

PRIVACY_TEXT = (
    "What I keep: this chat's recent messages (who wrote them and what) in the responder service's history, so "
    "that I answer in context, and whether this chat is SFW. People on the opt-out list are never stored or sent. "
    "/forget deletes your messages (and my replies to them) from that history.")
TYPING_EVERY = 4.0
"""Seconds between "typing" actions: Telegram shows one for 5 s."""


@dataclass
class Room:
    """One chat's pending answer and the order of its service calls."""

    burst: list[Incoming] = field(default_factory=list)
    trigger: Incoming | None = None
    timer: asyncio.Task | None = None
    last_message: float = 0.0
    last_answer: float | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def seconds(retry_after: Any) -> float:  # noqa: ANN401 (int, or a timedelta in newer python-telegram-bot)
    return retry_after.total_seconds() if isinstance(retry_after, timedelta) else float(retry_after)


async def with_retries(call: Callable[[], Awaitable[Any]], what: str, attempts: int = 5,
                       first_delay: float = 1.0) -> Any:  # noqa: ANN401
    """``call()``, retried after Telegram's 429 (as long as it says) and after network errors (doubling waits)."""
    from telegram.error import BadRequest, NetworkError, RetryAfter

    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except RetryAfter as exc:
            wait = seconds(exc.retry_after)
            log.warning("%s: Telegram says too many requests, retrying in %.1f s (%d/%d)", what, wait, attempt,
                        attempts)
        except BadRequest:
            raise
        except NetworkError as exc:
            wait, delay = delay, delay * 2
            log.warning("%s: %s, retrying in %.1f s (%d/%d)", what, type(exc).__name__, wait, attempt, attempts)
        if attempt == attempts:
            break
        await asyncio.sleep(wait)
    raise ServiceDown(f"{what}: Telegram did not take it after {attempts} tries")


class Responder:
    """The bot's handlers and per-chat state."""

    def __init__(self, config: BotConfig, service: ServiceClient, settings: ChatSettings) -> None:
        self.config, self.service, self.settings = config, service, settings
        self.opted_out = set(config.canonical_opt_out())
        self.rooms: dict[int, Room] = {}
        self.rng = random.Random(config.seed)
        self.counts: Counter[str] = Counter()
        self.bot_id, self.username = 0, ""

    # ---- Telegram updates → Incoming ----

    def incoming(self, message: Message) -> Incoming | None:
        sender = message.from_user
        if sender is None:  # a channel's post or an anonymous admin: nobody to answer
            return None
        text = message.text or message.caption or ""
        addressed = mentions(text, self.username) or any(
            entity.type == "text_mention" and entity.user is not None and entity.user.id == self.bot_id
            for entity in (message.entities or ()) + (message.caption_entities or ()))
        replied = message.reply_to_message
        return Incoming(chat_id=message.chat.id, private=message.chat.type == "private",
                        message_id=message.message_id, sender_id=f"user{sender.id}", sender_name=sender.full_name,
                        sender_is_bot=sender.is_bot, text=text, addressed=addressed,
                        replies_to_bot=bool(replied and replied.from_user and replied.from_user.id == self.bot_id))

    async def on_update(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message  # new messages only: edits, channel posts and the rest are not answered
        if message is None:
            self.counts["not_a_new_message"] += 1
            return
        found = self.incoming(message)
        if found is None or found.sender_id == f"user{self.bot_id}":
            self.counts["no_sender"] += 1
            return
        why = skipped(found, self.opted_out)
        if why:
            self.counts[why] += 1
            return
        command = command_of(found.text, self.username)
        if command is not None:
            await self.on_command(command.name, command.argument, found, context)
            return
        await self.on_message(found, context)

    # ---- Messages ----

    async def on_message(self, message: Incoming, context: ContextTypes.DEFAULT_TYPE) -> None:
        room = self.rooms.setdefault(message.chat_id, Room())
        room.last_message = time.monotonic()
        reason = reason_to_answer(message, self.config.trigger_words, self.config.reply_probability, self.rng)
        if reason == "chance" and room.last_answer is not None and \
                room.last_message < room.last_answer + self.config.cooldown_seconds:
            reason = None  # speaking up unasked waits for the cooldown; being asked does not lose the answer
        if room.timer is not None:  # a burst is open: this message joins it
            room.burst.append(message)
            room.trigger = message if reason else room.trigger
            self.counts["joined_burst"] += 1
            self._schedule(room, message, context)
            return
        if reason is None:
            self.counts["stored"] += 1
            async with room.lock:
                await self._store([message])
            return
        self.counts[f"answer_{reason}"] += 1
        room.burst, room.trigger = [message], message
        self._schedule(room, message, context)

    def _schedule(self, room: Room, message: Incoming, context: ContextTypes.DEFAULT_TYPE) -> None:
        now = time.monotonic()
        when = answer_at(now, room.last_message, room.last_answer, self.config.debounce_seconds,
                         self.config.cooldown_seconds, message.private)
        if room.timer is not None:
            room.timer.cancel()
        room.timer = asyncio.create_task(self._answer_later(room, when - now, context))

    async def _answer_later(self, room: Room, delay: float, context: ContextTypes.DEFAULT_TYPE) -> None:
        await asyncio.sleep(delay)
        burst, trigger = room.burst, room.trigger
        room.burst, room.trigger, room.timer = [], None, None  # from here, new messages open a new burst
        async with room.lock:
            await self._store(burst[:-1])
            await self._answer(burst[-1], trigger or burst[-1], context)
        room.last_answer = time.monotonic()

    async def _store(self, messages: list[Incoming]) -> None:
        for message in messages:
            try:
                await self.service.store(message)
            except ServiceDown as exc:
                self.counts["store_failed"] += 1
                log.warning("chat %s: a message was not stored: %s", message.chat_id, exc)

    async def _answer(self, message: Incoming, trigger: Incoming, context: ContextTypes.DEFAULT_TYPE) -> None:
        bot = context.bot
        typing = asyncio.create_task(self._typing(bot, message.chat_id))
        try:
            reply = await self.service.reply(message, self.settings.sfw(message.chat_id))
        except ServiceDown as exc:
            self.counts["service_down"] += 1
            log.warning("chat %s: no reply: %s", message.chat_id, exc)
            return
        finally:
            typing.cancel()
        parts = split_message(reply)
        if not parts:
            self.counts["empty_reply"] += 1
            return
        await self._send(bot, message.chat_id, parts, None if message.private else trigger.message_id)
        self.counts["answered"] += 1

    async def _typing(self, bot: Any, chat_id: int) -> None:  # noqa: ANN401
        from telegram.constants import ChatAction
        from telegram.error import TelegramError

        while True:
            with contextlib.suppress(TelegramError):
                await bot.send_chat_action(chat_id, ChatAction.TYPING)
            await asyncio.sleep(TYPING_EVERY)

    async def _send(self, bot: Any, chat_id: int, parts: list[str], reply_to: int | None) -> None:  # noqa: ANN401
        from telegram import ReplyParameters
        from telegram.error import TelegramError

        for index, part in enumerate(parts):
            answer = ReplyParameters(reply_to, allow_sending_without_reply=True) if reply_to and index == 0 else None
            try:
                await with_retries(lambda: bot.send_message(chat_id, part, reply_parameters=answer),
                                   f"chat {chat_id}: sending a reply", first_delay=self.config.retry_seconds)
            except (ServiceDown, TelegramError) as exc:
                self.counts["send_failed"] += 1
                log.warning("%s", exc if isinstance(exc, ServiceDown) else f"chat {chat_id}: reply not sent: "
                            f"{type(exc).__name__}")
                return

    # ---- Commands ----

    async def on_command(self, name: str, argument: str, message: Incoming,
                         context: ContextTypes.DEFAULT_TYPE) -> None:
        handlers = {"sfw": self._sfw, "forget": self._forget, "privacy": self._privacy, "start": self._start,
                    "help": self._start}
        handler = handlers.get(name)
        self.counts[f"command_{name}" if handler else "command_unknown"] += 1
        if handler is not None:
            text = await handler(argument, message, context)
            await self._send(context.bot, message.chat_id, [text], None if message.private else message.message_id)

    async def _start(self, argument: str, message: Incoming, context: ContextTypes.DEFAULT_TYPE) -> str:
        where = "here, to everything" if message.private else \
            f"to mentions (@{self.username}), replies to my messages" + \
            (f" and the words {', '.join(self.config.trigger_words)}" if self.config.trigger_words else "")
        return (f"I answer {where}. /sfw on|off switches the responder (admins), /privacy says what I keep, "
                "/forget deletes your messages from my history.")

    async def _sfw(self, argument: str, message: Incoming, context: ContextTypes.DEFAULT_TYPE) -> str:
        current = self.settings.sfw(message.chat_id)
        if argument.lower() not in ("on", "off"):
            return f"This chat is {'SFW' if current else 'NSFW'}. /sfw on or /sfw off switches it (admins)."
        if not message.private and not await self._is_admin(context.bot, message):
            return "Only the chat's admins can switch that."
        self.settings.set_sfw(message.chat_id, argument.lower() == "on")
        log.info("chat %s: sfw %s", message.chat_id, argument.lower())
        return f"This chat is {'SFW' if argument.lower() == 'on' else 'NSFW'} now."

    async def _is_admin(self, bot: Any, message: Incoming) -> bool:  # noqa: ANN401
        from telegram.error import TelegramError

        try:
            member = await with_retries(lambda: bot.get_chat_member(message.chat_id, int(message.sender_id[4:])),
                                        f"chat {message.chat_id}: checking an admin",
                                        first_delay=self.config.retry_seconds)
        except (ServiceDown, TelegramError):
            return False
        return member.status in ("creator", "administrator")

    async def _forget(self, argument: str, message: Incoming, context: ContextTypes.DEFAULT_TYPE) -> str:
        room = self.rooms.get(message.chat_id)
        if room is not None:  # not yet stored: never will be
            room.burst = [m for m in room.burst if m.sender_id != message.sender_id]
        try:
            async with (room.lock if room else contextlib.nullcontext()):
                deleted = await self.service.forget(message.chat_id, message.sender_id)
        except ServiceDown as exc:
            log.warning("chat %s: forget failed: %s", message.chat_id, exc)
            return "I could not reach my history just now; try /forget again shortly."
        return f"Done: {deleted} of your messages (with my replies to them) deleted from my history of this chat."

    async def _privacy(self, argument: str, message: Incoming, context: ContextTypes.DEFAULT_TYPE) -> str:
        return PRIVACY_TEXT

    # ---- Start and stop ----

    async def started(self, application: Application) -> None:
        me = application.bot
        self.bot_id, self.username = me.id, me.username or ""
        log.info("bot @%s is polling for messages", self.username)

    async def stopping(self, application: Application) -> None:
        """A clean stop: open bursts are stored (not answered), so that no message the bot saw is lost."""
        for room in self.rooms.values():
            if room.timer is not None:
                room.timer.cancel()
                room.timer = None
                await self._store(room.burst)
                room.burst = []
        await self.service.close()
        log.info("bot stopped; messages: %s", ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) or "none")
