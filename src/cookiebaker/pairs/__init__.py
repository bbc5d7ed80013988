"""Stage ``pairs``: the messages table → training samples (reply pairs or multi-turn conversations)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, TypedDict

import polars as pl
from pydantic import Field, field_validator, model_validator

from cookiebaker.config import StageConfig, config_path_for, save_resolved_config
from cookiebaker.errors import DatasetError
from cookiebaker.io import write_json, write_parquet
from cookiebaker.messages import canonical_sender_ids
from cookiebaker.pairs.context import Speakers
from cookiebaker.pairs.conversations import CONVERSATION_COLUMNS, build_conversations
from cookiebaker.pairs.filters import read_messages
from cookiebaker.pairs.privacy import Scrubber
from cookiebaker.pairs.replies import PAIR_COLUMNS, build_reply_pairs

__all__ = ["PairsConfig", "PrivacyConfig", "run", "PAIR_COLUMNS", "CONVERSATION_COLUMNS"]

log = logging.getLogger(__name__)


class PairsReport(TypedDict, total=False):
    """What ``pairs`` read, produced and dropped (also the JSON report, a DVC metric). ``dropped`` counts, by
    reason, the candidate replies (pairs mode) or the messages (conversations mode) that gave no sample."""

    mode: str
    messages: int
    samples: int
    dropped: dict[str, int]
    scrubbed: dict[str, int]
    response_senders: int | None
    reply_candidates: int  # pairs mode
    implicit_reply_candidates: int
    """Messages that may answer the one before them without a reply link (``implicit_replies``)."""
    implicit_pairs: int
    """Pairs made of those (counted in ``pairs`` too); the others are ``dropped.no_recent_message``."""
    pairs: int
    pairs_with_burst: int
    burst_messages_merged: int
    sessions: int  # conversations mode
    sessions_without_exchange: int
    turns: int


class PrivacyConfig(StageConfig):
    opt_out_sender_ids: list[str | int] = Field(default_factory=list)
    """Senders who did not consent: their messages never enter a sample, on either side."""
    scrub_phone_numbers: bool = True
    """Replace phone numbers in sample text with [PHONE]."""
    scrub_emails: bool = True
    """Replace e-mail addresses in sample text with [EMAIL]."""
    scrub_card_numbers: bool = True
    """Replace payment-card numbers (13-19 digits passing the Luhn check) with [CARD]."""

    _canonical = field_validator("opt_out_sender_ids")(classmethod(lambda cls, v: canonical_sender_ids(v)))


class PairsConfig(StageConfig):
    input: str = "data/messages.parquet"
    """The messages table written by ``cookiebaker ingest``."""
    output: str = "data/qa.parquet"
    """Where the samples are written (Parquet, atomically)."""
    report: str | None = None
    """Where the pairs report (JSON, a DVC metric) is written; default ``<output stem>_report.json``."""
    mode: Literal["pairs", "conversations"] = "pairs"
    """``pairs``: (query, response) from replies and bursts. ``conversations``: multi-turn samples."""
    context_turns: int = Field(6, ge=0)
    """Pairs: the chat's messages before each query given with it (at most this many, from the same session), as
    the service gives a chat's earlier turns with every message it answers; 0: the query alone. 6 by the demo's
    measures (README: "Context and speakers")."""
    speakers: Speakers = "names"
    """Who speaks in the user turns (as ``Name: text``, the way the service renders a webhook's sender_name):
    ``names`` from the export, ``aliases`` (Member 1, Member 2, ... per chat, in the order they first wrote) or
    ``none``."""
    burst_window_minutes: float = Field(5.0, gt=0)
    """A response burst continues while its sender writes again within this many minutes; an implicit reply
    answers a message written this recently."""
    implicit_replies: Literal["auto", "always", "never"] = "auto"
    """Replies without a reply link (a WhatsApp export has none): a message another sender writes within
    ``burst_window_minutes`` of the message before it answers that message. ``auto``: in chats without any reply
    link; ``always``: wherever a message is no reply; ``never``."""
    session_gap_minutes: float = Field(60.0, gt=0)
    """A silence longer than this starts a new session: conversations never span one, nor does a pair's context."""
    max_turns: int = Field(16, ge=2)
    """Conversations: longest sample in turns (even); longer sessions are split into several samples."""
    bot_sender_ids: list[str | int] = Field(default_factory=list)
    """Sender ids treated as bots besides every display name ending in 'bot'."""
    response_sender_ids: list[str | int] = Field(default_factory=list)
    """Keep only samples whose responses (assistant turns) are written by these senders: train the model
    to speak as one person. Empty: everyone."""
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    """Privacy filters, on by default."""

    _canonical = field_validator("bot_sender_ids", "response_sender_ids")(
        classmethod(lambda cls, v: canonical_sender_ids(v))
    )

    @model_validator(mode="after")
    def _check_combinations(self) -> PairsConfig:
        problems = []
        if self.max_turns % 2:
            problems.append(f"'max_turns' must be even (a sample ends on the assistant), got {self.max_turns}")
        silenced = sorted(set(self.response_sender_ids) & set(self.privacy.opt_out_sender_ids))
        if silenced:
            problems.append(f"'response_sender_ids' names opted-out sender(s) {', '.join(silenced)} "
                            "('privacy.opt_out_sender_ids')")
        if Path(self.input).resolve() == Path(self.output).resolve():
            problems.append("'output' must differ from 'input'")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def opted_out_names(messages: pl.DataFrame, privacy: PrivacyConfig) -> list[str]:
    """The display names opted-out senders wrote under: scrubbed from every sample's text (their messages never
    enter one)."""
    if not privacy.opt_out_sender_ids:
        return []
    return messages.filter(pl.col("sender_id").is_in(privacy.opt_out_sender_ids) & pl.col("sender").is_not_null()
                           )["sender"].unique().to_list()


def default_report_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(f"{output.stem}_report.json")


def run(config: PairsConfig) -> PairsReport:
    """Build the samples, write them, the report and the resolved config. Returns the report."""
    messages = read_messages(config.input)
    if messages.is_empty():
        raise DatasetError(f"{config.input}: the messages table is empty")
    privacy = config.privacy
    scrubber = Scrubber(emails=privacy.scrub_emails, cards=privacy.scrub_card_numbers,
                        phones=privacy.scrub_phone_numbers, names=opted_out_names(messages, privacy))
    if config.mode == "pairs":
        samples, details = build_reply_pairs(
            messages,
            window_minutes=config.burst_window_minutes,
            bot_sender_ids=config.bot_sender_ids,  # type: ignore[arg-type]
            opt_out_sender_ids=privacy.opt_out_sender_ids,  # type: ignore[arg-type]
            response_sender_ids=config.response_sender_ids,  # type: ignore[arg-type]
            context_turns=config.context_turns,
            session_gap_minutes=config.session_gap_minutes,
            speakers=config.speakers,
            implicit_replies=config.implicit_replies,
        )
        for column in ("query", "response"):
            samples = scrubber.scrub_column(samples, column)
        samples = scrubber.scrub_turns(samples, "context")
    else:
        samples, details = build_conversations(
            messages,
            session_gap_minutes=config.session_gap_minutes,
            max_turns=config.max_turns,
            bot_sender_ids=config.bot_sender_ids,  # type: ignore[arg-type]
            opt_out_sender_ids=privacy.opt_out_sender_ids,  # type: ignore[arg-type]
            response_sender_ids=config.response_sender_ids,  # type: ignore[arg-type]
            scrub=scrubber.scrub_column,
            speakers=config.speakers,
        )
    write_parquet(samples, config.output)
    report: PairsReport = {  # type: ignore[typeddict-item]
        "mode": config.mode,
        "messages": messages.height,
        "samples": samples.height,
        **details,
        "scrubbed": scrubber.report(),
        "response_senders": samples.select(pl.col("response_sender_id").n_unique()).item()
        if config.mode == "pairs" and samples.height else None,
    }
    write_json(report, config.report or default_report_path(config.output))
    save_resolved_config(config, config_path_for(config.output))
    log.info("pairs: %d messages → %d %s samples → %s", messages.height, samples.height, config.mode, config.output)
    return report
