"""Per-message flags shared by both sample modes: who is a bot, what is the sender's own text."""

from __future__ import annotations

import polars as pl

from cookiebaker.errors import DatasetError
from cookiebaker.messages import MESSAGE_SCHEMA, sorted_by_chat_and_id

REQUIRED_COLUMNS = ("chat_id", "message_id", "kind", "date", "sender", "sender_id", "text",
                    "reply_to_message_id", "reply_to_chat_id", "forwarded", "via_bot")
#: Columns pairing reads where the table has them (a table written by an earlier version may not).
OPTIONAL_COLUMNS = ("source", "sender_is_bot")


def read_messages(path: str) -> pl.DataFrame:
    """Read a messages table written by ``ingest``, checking that it has the columns pairing needs."""
    try:
        schema = pl.read_parquet_schema(path)
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file (run `cookiebaker ingest` first)") from None
    except Exception as exc:  # polars raises several error types for a file that is not Parquet
        raise DatasetError(f"{path}: not a readable Parquet file ({type(exc).__name__})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in schema]
    if missing:
        raise DatasetError(f"{path}: not a cookiebaker messages table: missing column(s) {', '.join(missing)}")
    wrong = [c for c in REQUIRED_COLUMNS if schema[c] != MESSAGE_SCHEMA[c]]
    if wrong:
        raise DatasetError(f"{path}: column(s) {', '.join(wrong)} have the wrong type")
    optional = [c for c in OPTIONAL_COLUMNS if c in schema]
    messages = pl.read_parquet(path, columns=[*REQUIRED_COLUMNS, *optional])
    messages = messages.with_columns(pl.lit(None, MESSAGE_SCHEMA[c]).alias(c) for c in OPTIONAL_COLUMNS
                                     if c not in schema)  # a table from an earlier version
    return messages if sorted_by_chat_and_id(messages, strict=False) else messages.sort(["chat_id", "message_id"])


def is_bot(bot_sender_ids: list[str]) -> pl.Expr:
    """The export says so (Discord's isBot), a display name ending in 'bot' (any case: GroupHelpBot, Helper Bot)
    or a configured sender id."""
    by_name = pl.col("sender").str.contains(r"(?i)bot\s*$").fill_null(False)
    return pl.col("sender_is_bot").fill_null(False) | by_name | pl.col("sender_id").is_in(bot_sender_ids).fill_null(False)


def is_own_message() -> pl.Expr:
    """A real message written by its sender: not a service entry, not forwarded, not sent via a bot."""
    return (pl.col("kind") == "message") & ~pl.col("forwarded") & pl.col("via_bot").is_null()


def first_reason(checks: list[tuple[str, pl.Expr]]) -> pl.Expr:
    """The name of the first check that holds, or null: every dropped candidate is counted once."""
    expr = pl.when(checks[0][1]).then(pl.lit(checks[0][0]))
    for reason, condition in checks[1:]:
        expr = expr.when(condition).then(pl.lit(reason))
    return expr.otherwise(pl.lit(None, pl.String))


def count_reasons(frame: pl.DataFrame, column: str, reasons: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(reasons, 0)
    for reason, n in frame.filter(pl.col(column).is_not_null()).group_by(column).len().iter_rows():
        counts[reason] = n
    return counts
