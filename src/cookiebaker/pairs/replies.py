"""Reply pairs: (query = the replied-to message, response = the reply and its sender's burst)."""

from __future__ import annotations

import polars as pl

from cookiebaker.pairs.filters import count_reasons, first_reason, is_bot, is_own_message

DROP_REASONS = [
    "reply_into_other_chat",
    "target_not_in_export",
    "response_forwarded",
    "response_via_bot",
    "response_from_bot",
    "query_not_a_message",
    "query_forwarded",
    "query_via_bot",
    "query_from_bot",
    "response_empty",
    "query_empty",
    "self_reply",
    "opted_out",
    "response_sender_not_selected",
]

PAIR_COLUMNS = ["query", "response", "chat_id", "query_message_id", "response_message_ids", "query_sender_id",
                "response_sender_id", "query_date", "response_date"]


def burst_segments(messages: pl.DataFrame, window_minutes: float) -> pl.Expr:
    """Segment id per row: a burst continues while the same sender keeps writing their own messages, each
    within the window of the previous one, none of them a reply."""
    own = is_own_message()
    continues = (
        (pl.col("chat_id") == pl.col("chat_id").shift(1))
        & own
        & own.shift(1)
        & (pl.col("sender_id") == pl.col("sender_id").shift(1))
        & ((pl.col("date") - pl.col("date").shift(1)) <= pl.duration(seconds=window_minutes * 60))
        & pl.col("reply_to_message_id").is_null()
    )
    return (~continues.fill_null(False)).cum_sum().alias("burst")


def build_reply_pairs(
    messages: pl.DataFrame,
    *,
    window_minutes: float,
    bot_sender_ids: list[str],
    opt_out_sender_ids: list[str],
    response_sender_ids: list[str],
) -> tuple[pl.DataFrame, dict]:
    frame = messages.with_columns(burst_segments(messages, window_minutes), is_bot(bot_sender_ids).alias("bot"))
    bursts = frame.group_by("burst").agg(
        pl.col("message_id").alias("response_message_ids"),
        pl.col("text").filter(pl.col("text") != "").str.join("\n").alias("response"),
    )
    targets = frame.select(
        "chat_id",
        pl.col("message_id").alias("target_id"),
        pl.col("kind").alias("q_kind"),
        pl.col("text").alias("query"),
        pl.col("sender_id").alias("query_sender_id"),
        pl.col("date").alias("query_date"),
        pl.col("forwarded").alias("q_forwarded"),
        pl.col("via_bot").alias("q_via_bot"),
        pl.col("bot").alias("q_bot"),
    )
    candidates = frame.filter((pl.col("kind") == "message") & pl.col("reply_to_message_id").is_not_null())
    candidates = candidates.with_columns(
        pl.when(pl.col("reply_to_chat_id").is_null()).then(pl.col("reply_to_message_id")).alias("target_id")
    ).join(targets, on=["chat_id", "target_id"], how="left")
    opted_out = pl.col("sender_id").is_in(opt_out_sender_ids) | pl.col("query_sender_id").is_in(opt_out_sender_ids)
    checks = [
        ("reply_into_other_chat", pl.col("reply_to_chat_id").is_not_null()),
        ("target_not_in_export", pl.col("q_kind").is_null()),
        ("response_forwarded", pl.col("forwarded")),
        ("response_via_bot", pl.col("via_bot").is_not_null()),
        ("response_from_bot", pl.col("bot")),
        ("query_not_a_message", pl.col("q_kind") != "message"),
        ("query_forwarded", pl.col("q_forwarded")),
        ("query_via_bot", pl.col("q_via_bot").is_not_null()),
        ("query_from_bot", pl.col("q_bot")),
        ("response_empty", pl.col("text") == ""),
        ("query_empty", pl.col("query") == ""),
        ("self_reply", (pl.col("sender_id") == pl.col("query_sender_id")).fill_null(False)),
        ("opted_out", opted_out.fill_null(False)),
    ]
    if response_sender_ids:
        checks.append(("response_sender_not_selected", ~pl.col("sender_id").is_in(response_sender_ids).fill_null(False)))
    candidates = candidates.with_columns(first_reason(checks).alias("drop_reason"))
    dropped = count_reasons(candidates, "drop_reason", DROP_REASONS)
    pairs = (
        candidates.filter(pl.col("drop_reason").is_null())
        .join(bursts, on="burst", how="left")
        .select(
            "query",
            "response",
            "chat_id",
            pl.col("target_id").alias("query_message_id"),
            "response_message_ids",
            "query_sender_id",
            pl.col("sender_id").alias("response_sender_id"),
            "query_date",
            pl.col("date").alias("response_date"),
        )
        .sort(["chat_id", "query_message_id", "response_date"])
    )
    burst_sizes = pairs.select(pl.col("response_message_ids").list.len())
    report = {
        "reply_candidates": candidates.height,
        "pairs": pairs.height,
        "dropped": dropped,
        "pairs_with_burst": int((burst_sizes.to_series() > 1).sum()) if pairs.height else 0,
        "burst_messages_merged": int(burst_sizes.to_series().sum() - pairs.height) if pairs.height else 0,
    }
    return pairs, report
