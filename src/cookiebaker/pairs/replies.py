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


def burst_starts(window_minutes: float) -> pl.Expr:
    """True where a row does not continue the burst of the row before: a burst goes on while the same sender
    keeps writing their own messages, each within the window of the previous one, none of them a reply."""
    own = is_own_message()
    continues = (
        (pl.col("chat_id") == pl.col("chat_id").shift(1))
        & own
        & own.shift(1)
        & (pl.col("sender_id") == pl.col("sender_id").shift(1))
        & ((pl.col("date") - pl.col("date").shift(1)) <= pl.duration(seconds=window_minutes * 60))
        & pl.col("reply_to_message_id").is_null()
    )
    return ~continues.fill_null(False)


def _burst_texts(frame: pl.DataFrame, pairs: pl.DataFrame) -> pl.DataFrame:
    """Response text and message ids of each pair: the reply's row and the rest of its burst."""
    rows = pairs.select("pair", pl.int_ranges("row", pl.col("row") + pl.col("burst_length")).alias("row"))
    members = rows.explode("row").join(frame.select("row", "message_id", "text"), on="row", how="left")
    return members.group_by("pair").agg(
        pl.col("message_id").alias("response_message_ids"),
        pl.col("text").filter(pl.col("text") != "").str.join("\n").alias("response"),
    )


def build_reply_pairs(
    messages: pl.DataFrame,
    *,
    window_minutes: float,
    bot_sender_ids: list[str],
    opt_out_sender_ids: list[str],
    response_sender_ids: list[str],
) -> tuple[pl.DataFrame, dict]:
    frame = messages.with_row_index("row").with_columns(
        burst_starts(window_minutes).alias("burst_start"), is_bot(bot_sender_ids).alias("bot")
    )
    starts = frame.select(pl.col("row").filter(pl.col("burst_start"))).to_series()
    ends = pl.concat([starts.slice(1), pl.Series([frame.height], dtype=starts.dtype)])
    burst_lengths = pl.DataFrame({"row": starts, "burst_length": ends - starts})
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
    ).join(targets, on=["chat_id", "target_id"], how="left", maintain_order="left")
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
    kept = (
        candidates.filter(pl.col("drop_reason").is_null())
        .join(burst_lengths, on="row", how="left", maintain_order="left")
        .with_row_index("pair")
    )
    single = kept.filter(pl.col("burst_length") == 1).select(
        "pair", pl.concat_list("message_id").alias("response_message_ids"), pl.col("text").alias("response"))
    longer = _burst_texts(frame, kept.filter(pl.col("burst_length") > 1))
    pairs = (
        kept.join(pl.concat([single, longer]), on="pair", how="left", maintain_order="left")
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
    )
    burst_sizes = kept.get_column("burst_length")
    report = {
        "reply_candidates": candidates.height,
        "pairs": pairs.height,
        "dropped": dropped,
        "pairs_with_burst": int((burst_sizes > 1).sum()),
        "burst_messages_merged": int(burst_sizes.sum() - pairs.height) if pairs.height else 0,
    }
    return pairs, report
