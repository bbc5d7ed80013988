"""Decoded chats → the messages table (schema.MESSAGE_SCHEMA), column by column."""

from __future__ import annotations

import polars as pl
from msgspec import UNSET

from cookiebaker.ingest.decode import Message, Peer
from cookiebaker.ingest.schema import MESSAGE_SCHEMA, UTC_TIME

# tdesktop 2.4.0–2.7.1 wrote peers (and the chat id) as internal ids: 2^32 + user id, 2^33 + chat/channel id.
# Older versions wrote plain int32 user ids; since 2.7.2 peers are strings such as "user123".
USER_SHIFT = 1 << 32
CHANNEL_SHIFT = 1 << 33
LOCAL_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


def canonical_peer(peer: Peer) -> str | None:
    """Any era's peer id → 'user123' / 'channel123' / 'chat123'."""
    if peer is None:
        return None
    if isinstance(peer, str):
        return f"user{peer}" if peer.isdigit() else peer
    if peer >= CHANNEL_SHIFT:
        return f"channel{peer - CHANNEL_SHIFT}"
    if peer >= USER_SHIFT:
        return f"user{peer - USER_SHIFT}"
    return f"user{peer}"


def bare_peer_id(peer: Peer) -> int | None:
    canonical = canonical_peer(peer)
    if canonical is None:
        return None
    digits = canonical.lstrip("abcdefghijklmnopqrstuvwxyz")
    return int(digits) if digits.lstrip("-").isdigit() else None


def unshift_chat_id(chat_id: int, peers_are_integers: bool) -> int:
    """The chat's bare id: undo the 2020-21 offset when the chat's peers are written as integers."""
    if peers_are_integers:
        if chat_id >= CHANNEL_SHIFT:
            return chat_id - CHANNEL_SHIFT
        if chat_id >= USER_SHIFT:
            return chat_id - USER_SHIFT
    return chat_id


_RARE_MEDIA = (
    ("poll", "poll"),
    ("location_information", "location"),
    ("contact_information", "contact"),
    ("place_name", "venue"),
    ("game_title", "game"),
    ("invoice_information", "invoice"),
    ("todo_list", "todo_list"),
    ("giveaway_information", "giveaway"),
    ("giveaway_results", "giveaway_results"),
    ("paid_stars_amount", "paid_media"),
)


def _rare_media_type(m: Message) -> str | None:
    if m.photo is not UNSET:
        return "photo"
    if m.file is not UNSET:
        return "file"
    for key, name in _RARE_MEDIA:
        if getattr(m, key) is not UNSET:
            return name
    return None


def _forward_name(m: Message) -> str | None:
    if isinstance(m.forwarded_from, str):
        return m.forwarded_from
    if isinstance(m.saved_from, str):
        return m.saved_from
    return None


def _join_parts(parts: list) -> str:  # noqa: ANN001
    return "".join([part if part.__class__ is str else part.text for part in parts])


def _strings(values: list) -> pl.Series:  # noqa: ANN001
    return pl.Series(values, dtype=pl.String)


def _mapped(values: list, convert) -> list:  # noqa: ANN001
    """Convert a column through a cache of its distinct values (peers repeat a lot)."""
    cache = {v: convert(v) for v in set(values)}
    if all(k is v or k == v for k, v in cache.items()):
        return values  # already canonical, as in every export since tdesktop 2.7.2
    return [cache[v] for v in values]


def _utc(unix: pl.Series, local: pl.Series) -> pl.Series:
    """UTC timestamps from unixtime strings, falling back to the export's local-time strings (read as UTC)."""
    stamps = pl.from_epoch(unix.cast(pl.Int64, strict=False), time_unit="s").dt.replace_time_zone("UTC")
    if local.len() == unix.len():
        from_local = local.str.to_datetime(LOCAL_DATE_FORMAT, strict=False, time_zone="UTC")
        stamps = stamps.fill_null(from_local)
    return stamps.cast(UTC_TIME)


def messages_frame(msgs: list[Message]) -> tuple[pl.DataFrame, Peer]:
    """One slice of a chat's messages → rows without the chat-level columns, and the slice's first peer."""
    U = UNSET  # noqa: N806 (a local is faster in the comprehensions below)
    raw_senders = [m.from_id if m.from_id is not None else m.actor_id for m in msgs]
    first_peer = next((p for p in raw_senders if p is not None), None)
    texts = [m.text for m in msgs]
    # Polls, locations, contacts, venues, games, invoices, to-do lists and giveaways never carry a caption, so
    # only captionless messages (and paid media, which may have one) need the slower check.
    media = [
        mt if (mt := m.media_type) is not None
        else "photo" if m.photo is not U
        else "file" if m.file is not U
        else _rare_media_type(m) if (t == "" or m.paid_stars_amount is not U)
        else None
        for m, t in zip(msgs, texts)
    ]
    unix_dates = _strings([m.date_unixtime for m in msgs])
    unix_edits = _strings([m.edited_unixtime for m in msgs])
    # Exports older than mid-2022 have no unixtime twins: only then are the local-time strings needed.
    local_dates = _strings([m.date for m in msgs] if unix_dates.null_count() else [])
    local_edits = _strings([m.edited for m in msgs] if unix_edits.null_count() else [])
    frame = pl.DataFrame([
        pl.Series("message_id", [m.id for m in msgs], dtype=pl.Int64),
        _strings([m.type for m in msgs]).alias("kind"),
        _utc(unix_dates, local_dates).alias("date"),
        _strings([m.sender if m.type == "message" else m.actor for m in msgs]).alias("sender"),
        _strings(_mapped(raw_senders, canonical_peer)).alias("sender_id"),
        _strings([t if t.__class__ is str else _join_parts(t) for t in texts]).alias("text"),
        pl.Series("reply_to_message_id", [m.reply_to_message_id for m in msgs], dtype=pl.Int64),
        pl.Series("reply_to_chat_id", _mapped([m.reply_to_peer_id for m in msgs], bare_peer_id), dtype=pl.Int64),
        pl.Series("forwarded", [m.forwarded_from is not U or m.saved_from is not U for m in msgs],
                  dtype=pl.Boolean),
        _strings([None if m.forwarded_from is U and m.saved_from is U else _forward_name(m)
                  for m in msgs]).alias("forwarded_from"),
        _strings(_mapped([m.forwarded_from_id for m in msgs], canonical_peer)).alias("forwarded_from_id"),
        _strings([m.via_bot for m in msgs]).alias("via_bot"),
        _strings(media).alias("media_type"),
        _strings([m.action for m in msgs]).alias("action"),
        _utc(unix_edits, local_edits).alias("edited"),
    ])
    # Before tdesktop 2.1.9 every message carried an "edited" at the epoch: that means "not edited".
    frame = frame.with_columns(pl.when(pl.col("edited").dt.year() > 1970).then(pl.col("edited")).alias("edited"))
    return frame, first_peer


def chat_frame(chat_id: int, name: str | None, chat_type: str | None, slices: list[tuple[pl.DataFrame, Peer]],
               source_file: str) -> pl.DataFrame:
    """Join a chat's slices and add the chat-level columns, in the order of MESSAGE_SCHEMA."""
    first_peer = next((peer for _, peer in slices if peer is not None), None)
    bare_id = unshift_chat_id(chat_id, isinstance(first_peer, int))
    frame = pl.concat([f for f, _ in slices], how="vertical") if slices else empty_frame().drop(
        "chat_id", "chat_name", "chat_type", "source_file")
    return frame.select(
        pl.lit(bare_id, pl.Int64).alias("chat_id"),
        pl.lit(name, pl.String).alias("chat_name"),
        pl.lit(chat_type, pl.String).alias("chat_type"),
        *[c for c in MESSAGE_SCHEMA if c not in ("chat_id", "chat_name", "chat_type", "source_file", "reply_to_chat_id")],
        pl.when(pl.col("reply_to_chat_id") != bare_id).then(pl.col("reply_to_chat_id")).alias("reply_to_chat_id"),
        pl.lit(source_file, pl.String).alias("source_file"),
    ).select(list(MESSAGE_SCHEMA)).cast(MESSAGE_SCHEMA)  # type: ignore[arg-type]


def empty_frame() -> pl.DataFrame:
    return pl.DataFrame(schema=MESSAGE_SCHEMA)
