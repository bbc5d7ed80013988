"""Decoded chats → the messages table (schema.MESSAGE_SCHEMA), column by column."""

from __future__ import annotations

import re

import polars as pl
from msgspec import UNSET, Raw

from cookiebaker.ingest.telegram.decode import Message, Peer
from cookiebaker.messages import UTC_TIME, as_messages, empty_messages

# tdesktop 2.4.0–2.7.1 wrote peers (and the chat id) as internal ids: 2^32 + user id, 2^33 + chat/channel id.
# Older versions wrote plain int32 user ids; since 2.7.2 peers are strings such as "user123".
USER_SHIFT = 1 << 32
CHANNEL_SHIFT = 1 << 33
LOCAL_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


_INTEGER = re.compile(r"-?[0-9]+")


def peer_number(peer: Peer) -> int | None:
    """A peer written as a number, or as the text of one (DuckDB reads both as text: they must mean the same)."""
    if isinstance(peer, int):
        return peer
    if isinstance(peer, str) and _INTEGER.fullmatch(peer):
        return int(peer)
    return None


def canonical_peer(peer: Peer) -> str | None:
    """Any era's peer id → 'user123' / 'channel123' / 'chat123'."""
    if peer is None:
        return None
    number = peer_number(peer)
    if number is None:
        return peer
    peer = number
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
    if not _INTEGER.fullmatch(digits):
        return None
    bare = int(digits)
    return bare if -(2**63) <= bare < 2**63 else None  # an id that is no 64-bit number names no chat


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


def _present(values: list) -> pl.Series:  # noqa: ANN001
    """Whether each message has the key (a forward from a deleted account has ``"forwarded_from": null``)."""
    return pl.Series([v is not UNSET for v in values], dtype=pl.Boolean)


_NULL = Raw(b"null")


def _media(values: list) -> pl.Series:  # noqa: ANN001
    """Whether each message carries this media: the key with a value (null, never written, means none)."""
    return pl.Series([v is not UNSET and v != _NULL for v in values], dtype=pl.Boolean)


def _rare_media(msgs: list[Message]) -> pl.Series:
    """The first rare media key each message has (poll, location, ...), or null; most slices have none."""
    names: list[str | None] = [None] * len(msgs)
    for key, name in reversed(_RARE_MEDIA):  # reversed: the first key in _RARE_MEDIA order wins
        values = [getattr(m, key) for m in msgs]
        if values.count(UNSET) != len(values):
            names = [name if v is not UNSET and v != _NULL else old for v, old in zip(values, names)]
    return _strings(names)


def raw_frame(msgs: list[Message]) -> tuple[pl.DataFrame, Peer]:
    """Decoded messages → the raw columns :func:`finish_frame` reads (the bulk reader's query returns the same
    ones), and the first sender peer as written."""
    U = UNSET  # noqa: N806 (a local is faster in the comprehensions below)
    first_peer = next((p for m in msgs if (p := m.from_id if m.from_id is not None else m.actor_id) is not None),
                      None)
    unix_dates = _strings([m.date_unixtime for m in msgs])
    unix_edits = _strings([m.edited_unixtime for m in msgs])
    # Exports older than mid-2022 have no unixtime twins: only where one is missing or unusable are the local-time
    # strings needed.
    frame = pl.DataFrame([
        pl.Series("message_id", [m.id for m in msgs], dtype=pl.Int64),
        _strings([m.type for m in msgs]).alias("kind"),
        unix_dates.alias("date_unixtime"),
        _strings([m.date for m in msgs] if _unusable(unix_dates) else [None] * len(msgs)).alias("date"),
        unix_edits.alias("edited_unixtime"),
        _strings([m.edited for m in msgs] if _unusable(unix_edits) else [None] * len(msgs)).alias("edited"),
        _strings([m.sender for m in msgs]).alias("from"),
        _strings(_mapped([m.from_id for m in msgs], canonical_peer)).alias("from_id"),
        _strings([m.actor for m in msgs]).alias("actor"),
        _strings(_mapped([m.actor_id for m in msgs], canonical_peer)).alias("actor_id"),
        _strings([m.action for m in msgs]).alias("action"),
        _strings([None if (f := m.forwarded_from) is U else f for m in msgs]).alias("forwarded_from"),
        _present([m.forwarded_from for m in msgs]).alias("forwarded_present"),
        _strings([None if (f := m.saved_from) is U else f for m in msgs]).alias("saved_from"),
        _present([m.saved_from for m in msgs]).alias("saved_present"),
        _strings(_mapped([m.forwarded_from_id for m in msgs], canonical_peer)).alias("forwarded_from_id"),
        pl.Series("reply_to_message_id", [m.reply_to_message_id for m in msgs], dtype=pl.Int64),
        pl.Series("reply_to_chat_id", _mapped([m.reply_to_peer_id for m in msgs], bare_peer_id), dtype=pl.Int64),
        _strings([m.via_bot for m in msgs]).alias("via_bot"),
        _strings([t if (t := m.text).__class__ is str else _join_parts(t) for m in msgs]).alias("text"),
        _strings([m.media_type for m in msgs]).alias("media_type"),
        _media([m.photo for m in msgs]).alias("photo"),
        _media([m.file for m in msgs]).alias("file"),
        _rare_media(msgs).alias("rare_media"),
        _media([m.paid_stars_amount for m in msgs]).alias("paid_media"),
    ])
    return frame, first_peer


#: A unixtime this far from 1970 (past the year 5000) is no time, and would overflow in microseconds.
MAX_UNIX_SECONDS = 10**11


def _unix_seconds(unix: pl.Expr) -> pl.Expr:
    """Unixtime strings as seconds; null where the text is no integer or is out of range."""
    seconds = unix.cast(pl.Int64, strict=False)
    return pl.when(seconds.abs() < MAX_UNIX_SECONDS).then(seconds)


def _unusable(unix: pl.Series) -> bool:
    """Whether some message's unixtime is missing or unusable (then its local-time string is read instead)."""
    return unix.to_frame("u").select(_unix_seconds(pl.col("u")).null_count()).item() > 0


def _utc(unix: pl.Expr, local: pl.Expr) -> pl.Expr:
    """UTC timestamps from unixtime strings, falling back to the export's local-time strings (read as UTC)."""
    seconds = _unix_seconds(unix)
    from_unix = pl.from_epoch(seconds, time_unit="s").dt.replace_time_zone("UTC")
    # Only the rows without a readable unixtime are parsed (every export since tdesktop 3.7.6, 2022, has one).
    from_local = pl.when(seconds.is_null()).then(local).str.to_datetime(LOCAL_DATE_FORMAT, strict=False,
                                                                          time_zone="UTC")
    return pl.coalesce(from_unix.cast(UTC_TIME), from_local.cast(UTC_TIME))


def finish_frame(raw: pl.DataFrame) -> pl.DataFrame:
    """Raw columns (from either decoder) → the message columns of MESSAGE_SCHEMA, without the chat-level ones.

    This is where the export's rules live, once for both decoders: who the sender is, what counts as a forward,
    which media a message carries, and how dates are read.
    """
    is_message = pl.col("kind") == "message"
    # Polls, locations, contacts, venues, games, invoices, to-do lists and giveaways never carry a caption, so a
    # rare media key only names the media of a captionless message (or of paid media, which may have one).
    media = pl.coalesce(
        "media_type",
        pl.when("photo").then(pl.lit("photo")).when("file").then(pl.lit("file"))
        .when((pl.col("text") == "") | pl.col("paid_media")).then("rare_media"),
    )
    edited = _utc(pl.col("edited_unixtime"), pl.col("edited"))
    return raw.select(
        "message_id",
        "kind",
        _utc(pl.col("date_unixtime"), pl.col("date")).alias("date"),
        pl.when(is_message).then("from").otherwise("actor").alias("sender"),
        pl.coalesce("from_id", "actor_id").alias("sender_id"),
        "text",
        "reply_to_message_id",
        "reply_to_chat_id",
        (pl.col("forwarded_present") | pl.col("saved_present")).alias("forwarded"),
        pl.coalesce("forwarded_from", "saved_from").alias("forwarded_from"),
        "forwarded_from_id",
        "via_bot",
        media.alias("media_type"),
        "action",
        # Before tdesktop 2.1.9 every message carried an "edited" at the epoch: that means "not edited".
        pl.when(edited.dt.year() > 1970).then(edited).alias("edited"),
    )


def messages_frame(msgs: list[Message]) -> tuple[pl.DataFrame, Peer]:
    """One slice of a chat's decoded messages → rows without the chat-level columns, and the first peer."""
    raw, first_peer = raw_frame(msgs)
    return finish_frame(raw), first_peer


def chat_frame(chat_id: int, name: str | None, chat_type: str | None, slices: list[tuple[pl.DataFrame, Peer]],
               source_file: str) -> pl.DataFrame:
    """Join a chat's slices and add the chat-level columns: the messages table."""
    first_peer = next((peer for _, peer in slices if peer is not None), None)
    bare_id = unshift_chat_id(chat_id, peer_number(first_peer) is not None)
    frame = pl.concat([f for f, _ in slices], how="vertical") if slices else empty_messages().drop(
        "source", "chat_id", "chat_name", "chat_type", "source_file")
    return as_messages(frame.with_columns(
        pl.lit("telegram").alias("source"),
        pl.lit(bare_id, pl.Int64).alias("chat_id"),
        pl.lit(name, pl.String).alias("chat_name"),
        pl.lit(chat_type, pl.String).alias("chat_type"),
        pl.when(pl.col("reply_to_chat_id") != bare_id).then(pl.col("reply_to_chat_id")).alias("reply_to_chat_id"),
        pl.lit(source_file, pl.String).alias("source_file"),
    ))
