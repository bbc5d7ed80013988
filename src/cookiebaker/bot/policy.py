"""What the bot does with a message, decided without Telegram or the service: pure functions on plain values."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

#: Telegram's longest message text.
TELEGRAM_LIMIT = 4096


@dataclass(frozen=True)
class Incoming:
    """A new message as the bot sees it."""

    chat_id: int
    private: bool
    message_id: int
    sender_id: str
    """``user<id>``, as a Telegram export names its senders (and the opt-out list names them)."""
    sender_name: str
    sender_is_bot: bool
    text: str
    """The text, or a media message's caption; empty for media without one."""
    addressed: bool = False
    """A mention of the bot (``@name`` or a text mention)."""
    replies_to_bot: bool = False


@dataclass(frozen=True)
class Command:
    name: str
    argument: str


def command_of(text: str, bot_username: str) -> Command | None:
    """``/name[@bot] argument`` → the command; None for plain text and for a command addressed to another bot."""
    found = re.match(r"^/([A-Za-z0-9_]{1,32})(?:@([A-Za-z0-9_]+))?(?:\s+(.*))?$", text.strip(), re.S)
    if not found:
        return None
    if found[2] and found[2].lower() != bot_username.lower():
        return None
    return Command(found[1].lower(), (found[3] or "").strip())


def mentions(text: str, bot_username: str) -> bool:
    """Whether the text names the bot as ``@username`` (as a whole word)."""
    return re.search(rf"(?<![\w@])@{re.escape(bot_username)}\b", text, re.I) is not None


def triggered(text: str, words: list[str]) -> bool:
    """Whether one of the trigger words occurs in the text as a whole word, in any case."""
    return any(re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.I) for word in words if word.strip())


def reason_to_answer(message: Incoming, trigger_words: list[str], reply_probability: float,
                     rng: random.Random) -> str | None:
    """Why the bot answers this message (``private``, ``mention``, ``reply``, ``trigger``, ``chance``), or None.
    A message the bot does not answer may still be stored as context (see :func:`kept`)."""
    if message.private:
        return "private"
    if message.addressed:
        return "mention"
    if message.replies_to_bot:
        return "reply"
    if triggered(message.text, trigger_words):
        return "trigger"
    if reply_probability > 0 and rng.random() < reply_probability:
        return "chance"
    return None


def skipped(message: Incoming, opted_out: set[str]) -> str | None:
    """Why a message is neither stored nor answered: ``bot``, ``opted_out``, ``no_text``; None to keep it."""
    if message.sender_is_bot:
        return "bot"
    if message.sender_id in opted_out:
        return "opted_out"
    if not message.text.strip():
        return "no_text"
    return None


def answer_at(now: float, last_message: float, last_answer: float | None, debounce: float, cooldown: float,
              private: bool) -> float:
    """When a pending answer is given: ``debounce`` seconds after the burst's last message, and in a group not
    before ``cooldown`` seconds after the chat's previous answer."""
    when = last_message + debounce
    if not private and last_answer is not None:
        when = max(when, last_answer + cooldown)
    return max(when, now)


def split_message(text: str, limit: int = TELEGRAM_LIMIT) -> list[str]:
    """A reply in Telegram-sized parts: cut at the last paragraph, line or word break before the limit where
    there is one, else hard."""
    parts, rest = [], text.strip()
    while len(rest) > limit:
        window = rest[:limit]
        cut = max(window.rfind("\n\n"), window.rfind("\n"), window.rfind(" "))
        cut = cut if cut > limit // 2 else limit
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        parts.append(rest)
    return parts
