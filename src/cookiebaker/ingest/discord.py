"""DiscordChatExporter's JSON exports (the format Discord users export channels in) → the messages table.

The schema is DiscordChatExporter's ``JsonMessageWriter``: ``guild``, ``channel`` and ``messages[]`` with ``id``,
``type``, ``timestamp``, ``timestampEdited``, ``author{id, name, nickname, isBot}``, ``content``,
``attachments``, ``embeds``, ``stickers``, ``mentions``, ``reactions``, ``reference{type, messageId, channelId}``
and ``forwardedMessage``. Only the keys cookiebaker uses are decoded (msgspec, typed); older exports without
``stickers``, ``roles`` or ``reference.type`` read the same.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Union

import msgspec
import polars as pl
from msgspec import Meta

from cookiebaker.errors import ExportFormatError, InputFileError
from cookiebaker.ingest.readers import Read, ReadOptions, first_invalid_utf8
from cookiebaker.messages import UTC_TIME, as_messages

#: A snowflake: Discord's 64-bit id, written as its digits.
Snowflake = Annotated[str, Meta(pattern=r"^[0-9]{1,19}$")]
#: Message types that are someone writing; every other type (joins, pins, calls, renames, threads, types this
#: reader does not know, numbers) is a service entry.
WRITTEN = ("Default", "Reply")
#: Attachments by file ending; others are files.
_MEDIA = (("photo", (".png", ".jpg", ".jpeg", ".gif", ".webp", ".heic")),
          ("video_file", (".mp4", ".mov", ".webm", ".mkv")),
          ("voice_message", (".ogg", ".mp3", ".m4a", ".wav", ".opus")))
_DETECT = re.compile(rb'^\s*\{\s*"guild"\s*:\s*\{')


class Author(msgspec.Struct, gc=False):
    id: Snowflake
    name: Union[str, None] = None
    nickname: Union[str, None] = None
    isBot: bool = False  # noqa: N815 (the export's key)


class Reference(msgspec.Struct, gc=False):
    messageId: Union[Snowflake, None] = None  # noqa: N815
    channelId: Union[Snowflake, None] = None  # noqa: N815
    type: Union[str, None] = None


class Attachment(msgspec.Struct, gc=False):
    fileName: str = ""  # noqa: N815


class Sticker(msgspec.Struct, gc=False):
    name: str = ""


class Forwarded(msgspec.Struct, gc=False):
    content: str = ""


class Message(msgspec.Struct, gc=False):
    id: Snowflake
    timestamp: str
    author: Author
    type: str = "Default"
    timestampEdited: Union[str, None] = None  # noqa: N815
    content: str = ""
    attachments: list[Attachment] = []
    stickers: list[Sticker] = []
    reference: Union[Reference, None] = None
    forwardedMessage: Union[Forwarded, None] = None  # noqa: N815


class Channel(msgspec.Struct, gc=False):
    id: Snowflake
    type: Union[str, None] = None
    name: Union[str, None] = None


class Guild(msgspec.Struct, gc=False):
    name: Union[str, None] = None


class Export(msgspec.Struct, gc=False):
    channel: Channel
    messages: list[Message]
    guild: Union[Guild, None] = None


_DECODER = msgspec.json.Decoder(Export)


class DiscordReader:
    """DiscordChatExporter → Export → JSON."""

    name = "discord"
    suffixes = (".json",)

    def detect(self, head: bytes, path: Path) -> bool:
        return _DETECT.match(head.removeprefix(b"\xef\xbb\xbf")) is not None

    def read(self, path: Path, options: ReadOptions) -> Read:
        export = _decode(path)
        return Read(messages_table(export, str(path)), {"messages": len(export.messages)})


def _decode(path: Path) -> Export:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputFileError(path, f"cannot read the file: {exc.strerror or exc}") from None
    try:
        return _DECODER.decode(data.removeprefix(b"\xef\xbb\xbf"))
    except msgspec.ValidationError as exc:
        raise ExportFormatError(path, f"this JSON is not a valid DiscordChatExporter export: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        invalid = first_invalid_utf8(data)
        problem = (f"the file is not valid UTF-8 (byte {invalid})" if invalid is not None
                   else "the JSON nests too deeply" if isinstance(exc, RecursionError)
                   else f"the file is not valid JSON: {str(exc).splitlines()[0]}")
        raise ExportFormatError(path, problem) from None


def _action(kind: str) -> str:
    """``ChannelPinnedMessage`` → ``channel_pinned_message``; a number stays a number."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", kind).lower()


def _media(message: Message) -> str | None:
    if message.stickers:
        return "sticker"
    for attachment in message.attachments:
        name = attachment.fileName.lower()
        return next((kind for kind, endings in _MEDIA if name.endswith(endings)), "file")
    return None


def messages_table(export: Export, source_file: str) -> pl.DataFrame:
    """One channel's messages as the messages table (the chat is the channel)."""
    channel = export.channel
    msgs = export.messages
    written = [m.type in WRITTEN for m in msgs]
    references = [m.reference for m in msgs]
    forwards = [m.forwardedMessage is not None or (r is not None and r.type == "Forward")
                for m, r in zip(msgs, references)]
    replies = [r.messageId if r is not None and not f and w else None for r, f, w in zip(references, forwards, written)]
    elsewhere = [r.channelId if r is not None and reply is not None and r.channelId not in (None, channel.id) else None
                 for r, reply in zip(references, replies)]
    name = " / ".join(part for part in ((export.guild.name if export.guild else None), channel.name) if part)
    frame = pl.DataFrame({
        "message_id": [m.id for m in msgs],
        "kind": ["message" if w else "service" for w in written],
        "timestamp": [m.timestamp for m in msgs],
        "edited_at": [m.timestampEdited for m in msgs],
        "sender": [m.author.nickname or m.author.name for m in msgs],
        "sender_id": [f"discord:{m.author.id}" for m in msgs],
        "sender_is_bot": [m.author.isBot for m in msgs],
        "text": [m.content if w else "" for m, w in zip(msgs, written)],
        "reply_to_message_id": replies,
        "reply_to_chat_id": elsewhere,
        "forwarded": forwards,
        "media_type": [_media(m) if w else None for m, w in zip(msgs, written)],
        "action": [None if w else _action(m.type) for m, w in zip(msgs, written)],
    }, schema_overrides={"reply_to_message_id": pl.String, "reply_to_chat_id": pl.String, "edited_at": pl.String})
    return as_messages(frame.with_columns(
        pl.lit("discord").alias("source"),
        pl.lit(int(channel.id), pl.Int64).alias("chat_id"),
        pl.lit(name or None, pl.String).alias("chat_name"),
        pl.lit(channel.type, pl.String).alias("chat_type"),
        pl.col("message_id").cast(pl.Int64),
        _utc(pl.col("timestamp")).alias("date"),
        _utc(pl.col("edited_at")).alias("edited"),
        pl.col("reply_to_message_id").cast(pl.Int64),
        pl.col("reply_to_chat_id").cast(pl.Int64),
        pl.lit(source_file, pl.String).alias("source_file"),
    ).sort("message_id"))


def _utc(column: pl.Expr) -> pl.Expr:
    """DiscordChatExporter's ISO 8601 times with their offsets (``2023-05-04T16:13:23.123+02:00``) → UTC; null
    where unreadable (ingest counts those rows)."""
    return column.str.to_datetime(strict=False, time_zone="UTC", time_unit="us").cast(UTC_TIME)
