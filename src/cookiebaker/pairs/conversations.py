"""Conversation samples: multi-turn chats (user/assistant strictly alternating, ending on the assistant)."""

from __future__ import annotations

import polars as pl

from cookiebaker.chat import spoken
from cookiebaker.pairs.context import Speakers, speaker_column
from cookiebaker.pairs.filters import count_reasons, first_reason, is_bot

MESSAGE_DROP_REASONS = ["not_a_message", "forwarded", "via_bot", "from_bot", "empty", "opted_out"]
CONVERSATION_COLUMNS = ["messages", "chat_id", "message_ids", "start_date", "turns"]


def _runs(change: pl.Expr, name: str) -> pl.Expr:
    """Number consecutive rows into runs that restart where ``change`` holds."""
    return change.fill_null(True).cum_sum().alias(name)


def build_conversations(
    messages: pl.DataFrame,
    *,
    session_gap_minutes: float,
    max_turns: int,
    bot_sender_ids: list[str],
    opt_out_sender_ids: list[str],
    response_sender_ids: list[str],
    scrub,  # noqa: ANN001 (a callable frame, column → frame)
    speakers: Speakers = "none",
) -> tuple[pl.DataFrame, dict]:
    flagged = messages.with_columns(speaker_column(messages, speakers)).with_columns(
        first_reason([
            ("not_a_message", pl.col("kind") != "message"),
            ("forwarded", pl.col("forwarded")),
            ("via_bot", pl.col("via_bot").is_not_null()),
            ("from_bot", is_bot(bot_sender_ids)),
            ("empty", pl.col("text") == ""),
            ("opted_out", pl.col("sender_id").is_in(opt_out_sender_ids).fill_null(False)),
        ]).alias("drop_reason")
    )
    dropped = count_reasons(flagged, "drop_reason", MESSAGE_DROP_REASONS)
    kept = flagged.filter(pl.col("drop_reason").is_null())
    new_session = (pl.col("chat_id") != pl.col("chat_id").shift(1)) | (
        (pl.col("date") - pl.col("date").shift(1)) > pl.duration(seconds=session_gap_minutes * 60)
    )
    kept = kept.with_columns(_runs(new_session, "session"))
    kept = kept.with_columns(_runs((pl.col("session") != pl.col("session").shift(1))
                                   | (pl.col("sender_id") != pl.col("sender_id").shift(1)).fill_null(True), "turn"))
    turns = kept.group_by("turn", maintain_order=True).agg(
        pl.col("session").first(),
        pl.col("chat_id").first(),
        pl.col("sender_id").first(),
        pl.col("speaker").first(),
        pl.col("date").first(),
        pl.col("message_id").alias("message_ids"),
        pl.col("text").str.join("\n").alias("content"),
    )
    position = pl.int_range(pl.len()).over("session")
    if response_sender_ids:
        turns = turns.with_columns(
            pl.when(pl.col("sender_id").is_in(response_sender_ids).fill_null(False))
            .then(pl.lit("assistant")).otherwise(pl.lit("user")).alias("role")
        )
        # Several people talking in a row are one user turn when the model speaks as the chosen senders; each line
        # keeps its speaker, rendered as the service renders one.
        turns = turns.with_columns(_runs((pl.col("session") != pl.col("session").shift(1))
                                         | (pl.col("role") != pl.col("role").shift(1)), "merged"))
        turns = turns.with_columns(
            pl.when(pl.col("role") == "user")
            .then(pl.struct("speaker", "content").map_elements(lambda t: spoken(t["speaker"], t["content"]),
                                                                return_dtype=pl.String))
            .otherwise("content").alias("content"))
        turns = turns.group_by("merged", maintain_order=True).agg(
            pl.col("session").first(),
            pl.col("chat_id").first(),
            pl.col("date").first(),
            pl.col("role").first(),
            pl.lit(None, pl.String).alias("speaker"),
            pl.col("message_ids").list.explode(keep_nulls=False, empty_as_null=False),
            pl.col("content").str.join("\n"),
        )
    else:
        turns = turns.with_columns(
            pl.when(position % 2 == 0).then(pl.lit("user")).otherwise(pl.lit("assistant")).alias("role")
        )
    index = pl.int_range(pl.len()).over("session")
    first_user = pl.when(pl.col("role") == "user").then(index).min().over("session")
    last_assistant = pl.when(pl.col("role") == "assistant").then(index).max().over("session")
    turns = turns.with_columns(index.alias("index"), first_user.alias("first_user"),
                               last_assistant.alias("last_assistant"))
    trimmed = turns.filter((pl.col("index") >= pl.col("first_user")) & (pl.col("index") <= pl.col("last_assistant")))
    trimmed = trimmed.with_columns(((pl.col("index") - pl.col("first_user")) // max_turns).alias("chunk"))
    trimmed = scrub(trimmed, "content")
    samples = (
        trimmed.group_by(["session", "chunk"], maintain_order=True)
        .agg(
            pl.struct("role", "content", "speaker").alias("messages"),
            pl.col("chat_id").first(),
            pl.col("message_ids").list.explode(keep_nulls=False, empty_as_null=False),
            pl.col("date").first().alias("start_date"),
            pl.len().alias("turns"),
        )
        .filter(pl.col("turns") >= 2)
        .select(CONVERSATION_COLUMNS)
    )
    sessions = turns.select(pl.col("session").n_unique()).item() if turns.height else 0
    report = {
        "dropped": dropped,  # messages left out, by reason (the reply-pairs report counts candidate replies)
        "sessions": sessions,
        "sessions_without_exchange": sessions - trimmed.select(pl.col("session").n_unique()).item()
        if trimmed.height else sessions,
        "samples": samples.height,
        "turns": int(samples["turns"].sum()) if samples.height else 0,
    }
    return samples, report
