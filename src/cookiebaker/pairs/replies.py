"""Reply pairs: (query = the replied-to message, response = the reply and its sender's burst)."""

from __future__ import annotations

from typing import Literal

import polars as pl

from cookiebaker.pairs.context import Speakers, context_eligible, context_of, speaker_column
from cookiebaker.pairs.filters import count_reasons, first_reason, is_bot, is_own_message

DROP_REASONS = [
    "no_recent_message",
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
                "response_sender_id", "query_date", "response_date", "query_speaker", "context"]


ImplicitReplies = Literal["auto", "always", "never"]


def implicit_candidates(mode: ImplicitReplies) -> pl.Expr:
    """Messages that may answer the message before them without a reply link: burst starts that are no reply, in
    chats without any reply link (``auto``: a WhatsApp export has none), or everywhere (``always``)."""
    if mode == "never":
        return pl.lit(False)
    unlinked = pl.col("reply_to_message_id").is_null()
    chat_has_no_links = unlinked.all().over("chat_id") if mode == "auto" else pl.lit(True)
    return chat_has_no_links & (pl.col("kind") == "message") & unlinked & pl.col("burst_start")


def implicit_target(window_minutes: float) -> pl.Expr:
    """The message an implicit reply answers: the one right before it, when another sender wrote it within the
    window; null otherwise."""
    previous_ok = (
        (pl.col("chat_id") == pl.col("chat_id").shift(1))
        & (pl.col("kind").shift(1) == "message")
        & (pl.col("sender_id") != pl.col("sender_id").shift(1))
        & ((pl.col("date") - pl.col("date").shift(1)) <= pl.duration(seconds=window_minutes * 60))
    ).fill_null(False)
    return pl.when(previous_ok).then(pl.col("message_id").shift(1))


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
    members = pairs.select("pair", pl.int_ranges("row", pl.col("row") + pl.col("burst_length")).alias("row"))
    members = members.explode("row")
    rows = members.get_column("row")
    members = members.with_columns(frame.get_column("message_id").gather(rows), frame.get_column("text").gather(rows))
    return members.group_by("pair", maintain_order=True).agg(
        pl.col("message_id").alias("response_message_ids"),
        pl.col("text").filter(pl.col("text") != "").str.join("\n").alias("response"),
    )


_ID_OFFSET = 1 << 31  # Telegram's message ids fit 32 bits (negative for migrated history); Discord's do not


def _target_rows(frame: pl.DataFrame, candidates: pl.DataFrame) -> pl.Series:
    """The row of each candidate's replied-to message, or null when it is not in the export.

    ``frame`` is sorted by (chat_id, message_id), so (chat, id) packed into one integer is sorted too and a binary
    search finds every target at once, without a hash join.
    """
    ids = frame.get_column("message_id")
    if ids.is_empty() or ids.min() < -_ID_OFFSET or ids.max() >= _ID_OFFSET:  # type: ignore[operator]
        targets = frame.select("chat_id", pl.col("message_id").alias("target_id"), pl.col("row").alias("q_row"))
        return candidates.join(targets, on=["chat_id", "target_id"], how="left", maintain_order="left")["q_row"]
    keys = frame.get_column("chat_rank") * (2 * _ID_OFFSET) + ids + _ID_OFFSET
    wanted = candidates.select(
        pl.when(pl.col("target_id").is_between(-_ID_OFFSET, _ID_OFFSET - 1))
        .then(pl.col("chat_rank") * (2 * _ID_OFFSET) + pl.col("target_id") + _ID_OFFSET)
    ).to_series()
    found = keys.search_sorted(wanted.fill_null(-1), side="left").clip(upper_bound=max(len(keys) - 1, 0))
    return pl.select(pl.when(keys.gather(found) == wanted).then(found)).to_series().alias("q_row")


def build_reply_pairs(
    messages: pl.DataFrame,
    *,
    window_minutes: float,
    bot_sender_ids: list[str],
    opt_out_sender_ids: list[str],
    response_sender_ids: list[str],
    context_turns: int = 0,
    session_gap_minutes: float = 60.0,
    speakers: Speakers = "none",
    implicit_replies: ImplicitReplies = "auto",
) -> tuple[pl.DataFrame, dict]:
    frame = messages.with_row_index("row").with_columns(
        burst_starts(window_minutes).alias("burst_start"), is_bot(bot_sender_ids).alias("bot"),
        (pl.col("chat_id") != pl.col("chat_id").shift(1)).fill_null(True).cum_sum().cast(pl.Int64).alias("chat_rank"),
        (pl.col("text") == "").alias("empty"),
        context_eligible(bot_sender_ids, opt_out_sender_ids).alias("eligible"),
        speaker_column(messages, speakers),
    )
    starts = frame.select(pl.col("row").filter(pl.col("burst_start"))).to_series()
    ends = pl.concat([starts.slice(1), pl.Series([frame.height], dtype=starts.dtype)])
    # A reply always starts a burst: the length of the burst it starts, by row.
    burst_length = pl.zeros(frame.height, pl.UInt32, eager=True).scatter(starts, ends - starts)
    frame = frame.with_columns(implicit_candidates(implicit_replies).alias("implicit"),
                               implicit_target(window_minutes).alias("implicit_target"))
    candidates = frame.filter(((pl.col("kind") == "message") & pl.col("reply_to_message_id").is_not_null())
                              | pl.col("implicit"))
    candidates = candidates.with_columns(
        pl.when(pl.col("implicit")).then(pl.col("implicit_target"))
        .when(pl.col("reply_to_chat_id").is_null()).then(pl.col("reply_to_message_id")).alias("target_id")
    )
    q_row = _target_rows(frame, candidates)
    candidates = candidates.with_columns(q_row).with_columns(
        frame.get_column(source).gather(q_row).alias(name) for source, name in (
            ("kind", "q_kind"), ("sender_id", "query_sender_id"), ("forwarded", "q_forwarded"),
            ("via_bot", "q_via_bot"), ("bot", "q_bot"), ("empty", "q_empty"))
    )
    opted_out = pl.col("sender_id").is_in(opt_out_sender_ids) | pl.col("query_sender_id").is_in(opt_out_sender_ids)
    checks = [
        ("no_recent_message", pl.col("implicit") & pl.col("target_id").is_null()),
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
        ("query_empty", pl.col("q_empty")),
        ("self_reply", (pl.col("sender_id") == pl.col("query_sender_id")).fill_null(False)),
        ("opted_out", opted_out.fill_null(False)),
    ]
    if response_sender_ids:
        checks.append(("response_sender_not_selected", ~pl.col("sender_id").is_in(response_sender_ids).fill_null(False)))
    candidates = candidates.with_columns(first_reason(checks).alias("drop_reason"))
    dropped = count_reasons(candidates, "drop_reason", DROP_REASONS)
    kept = candidates.filter(pl.col("drop_reason").is_null()).with_row_index("pair")
    q_rows = kept.get_column("q_row")
    kept = kept.with_columns(  # the texts and dates of the replied-to messages, for the kept pairs only
        burst_length.gather(kept.get_column("row")).alias("burst_length"),
        frame.get_column("text").gather(q_rows).alias("query"),
        frame.get_column("date").gather(q_rows).alias("query_date"),
        frame.get_column("speaker").gather(q_rows).alias("query_speaker"),
        context_of(frame, q_rows, turns=context_turns, session_gap_minutes=session_gap_minutes),
    )
    single = kept.filter(pl.col("burst_length") == 1).select(
        "pair", pl.concat_list("message_id").alias("response_message_ids"), pl.col("text").alias("response"))
    longer = _burst_texts(frame, kept.filter(pl.col("burst_length") > 1))
    # Every pair is in exactly one of the two: sorted by pair number they line up with ``kept``.
    responses = pl.concat([single, longer]).sort("pair")
    pairs = kept.drop("response_message_ids", "response", strict=False).hstack(
        responses.drop("pair")).select(
            "query",
            "response",
            "chat_id",
            pl.col("target_id").alias("query_message_id"),
            "response_message_ids",
            "query_sender_id",
            pl.col("sender_id").alias("response_sender_id"),
            "query_date",
            pl.col("date").alias("response_date"),
            "query_speaker",
            "context",
        )
    burst_sizes = kept.get_column("burst_length")
    report = {
        "reply_candidates": candidates.height,
        "implicit_reply_candidates": int(candidates["implicit"].sum()),
        "implicit_pairs": int(kept["implicit"].sum()),
        "pairs": pairs.height,
        "dropped": dropped,
        "pairs_with_burst": int((burst_sizes > 1).sum()),
        "burst_messages_merged": int(burst_sizes.sum() - pairs.height) if pairs.height else 0,
    }
    return pairs, report
