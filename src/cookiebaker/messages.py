"""The messages table written by ``cookiebaker ingest``: one row per message, service entry or unsupported entry of
a chat, whichever app exported it. This is the contract every reader writes and every later stage reads."""

from __future__ import annotations

import polars as pl

UTC_TIME = pl.Datetime("us", "UTC")

#: column name → (polars dtype, meaning). This is the contract later stages read.
MESSAGE_COLUMNS: dict[str, tuple[pl.DataType, str]] = {
    "source": (pl.String(), "The app that exported the chat: telegram, whatsapp or discord."),
    "chat_id": (pl.Int64(), "Chat id: Telegram's bare id, Discord's channel id, a digest of a WhatsApp chat's name."),
    "chat_name": (pl.String(), "Chat title or user name; null for Saved Messages and deleted accounts."),
    "chat_type": (pl.String(), "personal_chat, private_group, ... (Telegram's and WhatsApp's); Discord's channel type."),
    "message_id": (pl.Int64(), "Message id in the chat (time-ordered); negative for Telegram history migrated from a "
                               "basic group; a WhatsApp export's message number."),
    "kind": (pl.String(), "message, service or unsupported."),
    "date": (UTC_TIME, "Send time in UTC: date_unixtime when present, else the export's local date read as UTC."),
    "sender": (pl.String(), "Display name of the sender (the actor for service entries); null when unknown."),
    "sender_id": (pl.String(), "Canonical id of the sender: Telegram's 'user123', 'channel123', 'chat123'; "
                               "'discord:123'; 'whatsapp:' and a digest of the name within the chat."),
    "sender_is_bot": (pl.Boolean(), "True where the export says the sender is a bot (Discord's isBot); null where the "
                                    "export does not say (pairs then goes by the name and bot_sender_ids)."),
    "text": (pl.String(), "Plain text with every entity flattened; '' when there is none."),
    "reply_to_message_id": (pl.Int64(), "Id of the message this one replies to, or null."),
    "reply_to_chat_id": (pl.Int64(), "Bare id of the other chat for a reply into another chat; else null."),
    "forwarded": (pl.Boolean(), "True for a forwarded (or saved-from) message, even when the origin is hidden."),
    "forwarded_from": (pl.String(), "Name of the original author of a forward (or the chat it was saved from)."),
    "forwarded_from_id": (pl.String(), "Canonical peer id of the original author, when the export has it."),
    "via_bot": (pl.String(), "'@username' of the inline bot the message was sent through, or null."),
    "media_type": (pl.String(), "photo, file, sticker, voice_message, video_file, poll, location, ... or null."),
    "action": (pl.String(), "Service action (pin_message, create_group, ...) for service entries, else null."),
    "edited": (UTC_TIME, "Last edit time in UTC, or null (the pre-2020 epoch placeholder reads as null)."),
    "source_file": (pl.String(), "Path of the export file the row was read from."),
}

MESSAGE_SCHEMA = pl.Schema({name: dtype for name, (dtype, _) in MESSAGE_COLUMNS.items()})
KINDS = ("message", "service", "unsupported")


def canonical_sender_ids(values: list[str | int]) -> list[str]:
    """Sender ids as the messages table writes them ('user123', 'channel123', 'discord:123'); a bare number is a
    Telegram user (what a Telegram bot sees, and what users copy from an export)."""
    out = []
    for value in values:
        text = str(value).strip()
        if text.lstrip("-").isdigit():
            text = f"user{text}"
        out.append(text)
    return out

SOURCES = ("telegram", "whatsapp", "discord")


def as_messages(frame: pl.DataFrame) -> pl.DataFrame:
    """A reader's columns as the messages table: the schema's columns in its order and types; one missing from
    ``frame`` is null."""
    return frame.select([pl.col(name) if name in frame.columns else pl.lit(None).alias(name)
                         for name in MESSAGE_SCHEMA]).cast(MESSAGE_SCHEMA)  # type: ignore[arg-type]


def empty_messages() -> pl.DataFrame:
    return pl.DataFrame(schema=MESSAGE_SCHEMA)


def sorted_by_chat_and_id(frame: pl.DataFrame, *, strict: bool) -> bool:
    """Whether rows are sorted by (chat_id, message_id), as ``ingest`` writes them; ``strict``: no key twice."""
    chat_step, id_step = pl.col("chat_id").diff(), pl.col("message_id").diff()
    id_ascends = id_step > 0 if strict else id_step >= 0
    return frame.select(((chat_step > 0) | ((chat_step == 0) & id_ascends)).slice(1).all()).item()
