"""Who speaks, and what was said before: the speakers of user turns and the earlier messages a reply pair is given,
as the service gives a chat's earlier turns with every message it answers."""

from __future__ import annotations

from typing import Literal

import polars as pl

from cookiebaker.pairs.filters import is_bot, is_own_message

Speakers = Literal["names", "aliases", "none"]
#: An alias names a sender by the order in which they first wrote in the chat.
ALIAS = "Member {}"
CONTEXT_TURN = pl.Struct({"speaker": pl.String, "content": pl.String})


def speaker_column(messages: pl.DataFrame, speakers: Speakers) -> pl.Series:
    """Each message's speaker as samples name it: the sender's display name, a stable alias per chat (``Member 1``
    for the first sender to write in it, ...), or null."""
    if speakers == "none":
        return pl.Series("speaker", [None] * messages.height, dtype=pl.String)
    if speakers == "names":
        return messages.get_column("sender").alias("speaker")
    firsts = (messages.with_row_index("_row").filter(pl.col("sender_id").is_not_null())
              .group_by("chat_id", "sender_id").agg(pl.col("_row").min())
              .sort("_row").with_columns(pl.int_range(1, pl.len() + 1).over("chat_id").alias("_number")))
    numbered = messages.select("chat_id", "sender_id").join(firsts, on=["chat_id", "sender_id"], how="left",
                                                             maintain_order="left")
    return numbered.select(pl.when(pl.col("_number").is_not_null())
                           .then(pl.format(ALIAS, pl.col("_number")))).to_series().alias("speaker")


def context_eligible(bot_sender_ids: list[str], opt_out_sender_ids: list[str]) -> pl.Expr:
    """A message that may be context: the sender's own, not a bot's, not empty, not an opted-out sender's."""
    return (is_own_message() & ~is_bot(bot_sender_ids) & (pl.col("text") != "")
            & ~pl.col("sender_id").is_in(opt_out_sender_ids).fill_null(False))


def context_of(frame: pl.DataFrame, query_rows: pl.Series, *, turns: int, session_gap_minutes: float) -> pl.Series:
    """Per query row of ``frame`` (rows numbered in ``row``, flagged ``eligible``, with ``speaker``; every query is
    eligible), the up to ``turns`` eligible messages right before it in its chat, oldest first, none across a
    silence of more than ``session_gap_minutes`` (between two of them, or between the newest and the query)."""
    empty = pl.lit([], dtype=pl.List(CONTEXT_TURN))
    if turns == 0 or query_rows.is_empty():  # built by polars: a Python list per row costs 10 s per million
        return pl.select(pl.repeat(empty, len(query_rows))).to_series().alias("context")
    pool = frame.filter("eligible")
    gap = pl.duration(seconds=session_gap_minutes * 60)
    pool = pool.with_columns(
        ((pl.col("chat_id") != pl.col("chat_id").shift(1)) | ((pl.col("date") - pl.col("date").shift(1)) > gap))
        .fill_null(True).cum_sum().alias("session"))
    position = pool.get_column("row").search_sorted(query_rows).cast(pl.Int64)
    wanted = pl.DataFrame({"pair": pl.int_range(len(query_rows), eager=True), "position": position})
    wanted = wanted.with_columns(pl.int_ranges(pl.max_horizontal(pl.col("position") - turns, 0), pl.col("position"))
                                 .alias("member")).explode("member").drop_nulls("member")
    session = pool.get_column("session")
    members = wanted.with_columns(
        session.gather(wanted.get_column("member")).alias("session"),
        session.gather(wanted.get_column("position")).alias("query_session"),
        pool.get_column("speaker").gather(wanted.get_column("member")).alias("speaker"),
        pool.get_column("text").gather(wanted.get_column("member")).alias("content"),
    ).filter(pl.col("session") == pl.col("query_session"))
    grouped = members.group_by("pair", maintain_order=True).agg(pl.struct("speaker", "content").alias("context"))
    every = pl.DataFrame({"pair": pl.int_range(len(query_rows), eager=True, dtype=pl.Int64)})
    joined = every.join(grouped.with_columns(pl.col("pair").cast(pl.Int64)), on="pair", how="left",
                        maintain_order="left")
    return joined.select(pl.coalesce("context", empty)).to_series().alias("context")
