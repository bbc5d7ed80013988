"""Stage ``ingest``: chat exports → one Parquet table of messages (one row per entry).

Each file goes to the reader that recognises its content (``readers``: Telegram Desktop JSON in ``ingest.telegram``,
WhatsApp's "Export chat" text or zip in ``ingest.whatsapp``, DiscordChatExporter JSON in ``ingest.discord``); the
messages table (``cookiebaker.messages``) is the contract with every later stage."""

from __future__ import annotations

import errno
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TypedDict

import polars as pl
from pydantic import Field

from cookiebaker.config import StageConfig, config_path_for, save_resolved_config
from cookiebaker.errors import InputFileError
from cookiebaker.ingest.readers import DateOrder, Read, ReadOptions, export_suffixes, reader_for
from cookiebaker.io import write_json, write_parquet
from cookiebaker.messages import KINDS, MESSAGE_COLUMNS, MESSAGE_SCHEMA, SOURCES, sorted_by_chat_and_id

__all__ = ["IngestConfig", "run", "read_export", "find_export_files", "MESSAGE_COLUMNS", "MESSAGE_SCHEMA"]

log = logging.getLogger(__name__)


class IngestReport(TypedDict):
    """What ``ingest`` read and wrote (also the JSON report, a DVC metric)."""

    files_read: int
    files_skipped: int
    files_by_source: dict[str, int]
    chats: int
    rows: int
    rows_by_kind: dict[str, int]
    duplicate_rows_dropped: int
    rows_dropped: dict[str, int]
    """Rows left out, by reason: ``unknown_type`` (not message, service or unsupported) and ``unreadable_date``
    (a message or service entry whose date is missing, unreadable or outside 2000–2999)."""
    edit_dates_cleared: int
    """Edit dates that were unreadable or outside 2000–2999, read as "not edited"."""
    files: list[str]
    read_as: list[dict]
    """Per file read: its source and what the reader decided (a WhatsApp export's date order and why)."""
    skipped: list[dict[str, str]]


class IngestConfig(StageConfig):
    inputs: list[str] = Field(default_factory=list)
    """Export files and folders; a folder means every export file below it (``*.json``, ``*.txt``, ``*.zip``), in
    sorted order. Each file is read by the reader that recognises its content: Telegram Desktop JSON, WhatsApp's
    "Export chat" (text or zip), DiscordChatExporter JSON."""
    output: str = "data/messages.parquet"
    """Where the messages table is written (Parquet, atomically)."""
    report: str | None = None
    """Where the ingest report (JSON, a DVC metric) is written; default: ``<output stem>_ingest.json``
    beside the output."""
    skip_invalid: bool = False
    """Continue past files that are not readable chat exports, listing them in the report, instead of failing on
    the first one."""
    date_order: DateOrder = "auto"
    """WhatsApp exports write dates in the phone's locale: ``dmy``, ``mdy`` or ``ymd``; auto: detected from the
    whole file (a part above 12 is the day, else the part that changes more often), said in the report."""


def _why_missing(path: Path) -> str:
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a loop of symbolic links (it points back to itself)"
        if path.is_symlink():
            return "a symbolic link to something that does not exist"
        if exc.errno == errno.ENOENT:
            return "no such file or folder"
        return f"cannot be read: {exc.strerror or exc}"
    return "neither a file nor a folder"


def find_export_files(inputs: list[str]) -> list[Path]:
    """Expand files and folders into the list of export files to read, in a stable order."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            suffixes = export_suffixes()
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                raise InputFileError(path, "the folder holds no export files ("
                                           + ", ".join(f"*{s}" for s in suffixes) + ")")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise InputFileError(path, _why_missing(path))
    unique: dict[Path, Path] = {}
    for file in files:
        unique.setdefault(file.resolve(), file)  # a file named twice (directly and in a folder) is read once
    return list(unique.values())


def read_export(path: str | Path, options: ReadOptions | None = None) -> pl.DataFrame:
    """One export file as the messages table (see :func:`read_file`)."""
    return read_file(Path(path), options or ReadOptions()).frame


def read_file(path: Path, options: ReadOptions) -> Read:
    """One export file by the reader that recognises its content, with what it decided. Whatever goes wrong
    reading it is an InputFileError naming the file (``--skip-invalid`` then skips it)."""
    try:
        read = reader_for(path).read(path, options)
        read.notes = {"file": str(path), "source": read.frame["source"][0] if read.frame.height else None,
                      **read.notes}
        return read
    except (InputFileError, MemoryError):
        raise
    except Exception as exc:  # a reader's bug must still name the file, and never end in a traceback
        log.debug("reading %s failed", path, exc_info=exc)
        first_line = (str(exc).splitlines() or [""])[0][:200]
        raise InputFileError(path, f"cannot be read ({type(exc).__name__}: {first_line})") from exc


#: Send and edit times outside these years are unreadable values, not dates (Telegram began in 2013).
DATE_RANGE = (datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(3000, 1, 1, tzinfo=timezone.utc))


def check_values(frame: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int], int]:
    """Rows whose values cannot be used are left out and counted by reason; unreadable edit dates are cleared
    and counted. The same rules for every reader, after it."""
    unknown_type = ~pl.col("kind").is_in(KINDS)
    dated = pl.col("date").is_between(*DATE_RANGE, closed="left").fill_null(False)
    unreadable_date = ~unknown_type & (pl.col("kind") != "unsupported") & ~dated
    edit_readable = pl.col("edited").is_between(*DATE_RANGE, closed="left")  # null where not edited
    counts = frame.select(unknown_type.sum().alias("unknown_type"), unreadable_date.sum().alias("unreadable_date"),
                          (~edit_readable).sum().alias("edits")).row(0, named=True)
    edits = counts.pop("edits")
    if counts["unknown_type"] or counts["unreadable_date"]:
        frame = frame.filter(~unknown_type & ~unreadable_date)
    if edits:
        frame = frame.with_columns(pl.when(edit_readable).then("edited").alias("edited"))
    return frame, counts, edits


def deduplicate(frame: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Sorted by (chat_id, message_id), one row per key: the latest edit wins, then the file read last."""
    if sorted_by_chat_and_id(frame, strict=True):  # no key twice: nothing to do
        return frame, 0
    ordered = frame.with_row_index("_order").sort(["edited", "_order"], nulls_last=False)
    kept = ordered.unique(["chat_id", "message_id"], keep="last").drop("_order")
    return kept.sort(["chat_id", "message_id"]), frame.height - kept.height


def default_report_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(f"{output.stem}_ingest.json")


def run(config: IngestConfig) -> IngestReport:
    """Read every export, write the messages table, its report and the resolved config. Returns the report."""
    files = find_export_files(config.inputs)
    if not files:
        raise InputFileError("(inputs)", "no export files or folders were given")
    frames: list[pl.DataFrame] = []
    notes: list[dict] = []
    skipped: list[dict[str, str]] = []
    options = ReadOptions(date_order=config.date_order)
    from cookiebaker.progress import progress_bar  # rich: only the command itself needs it, not its readers

    with progress_bar() as progress:
        task = progress.add_task("ingest", total=len(files))
        for path in files:
            progress.update(task, description=f"ingest {path.name}")
            try:
                read = read_file(path, options)
                frames.append(read.frame)
                notes.append(read.notes)
            except InputFileError as exc:
                if not config.skip_invalid:
                    raise
                log.warning("skipping %s", exc)
                skipped.append({"file": str(path), "error": exc.problem})
            progress.advance(task)
    if not frames:
        raise InputFileError("(inputs)", "none of the input files is a readable chat export")
    frame = pl.concat(frames, how="vertical")
    del frames
    frame, dropped, edits_cleared = check_values(frame)
    for reason, count in dropped.items():
        if count:
            log.warning("left out %d rows: %s (see the report)", count, reason.replace("_", " "))
    frame, duplicates = deduplicate(frame)
    if duplicates:
        log.info("dropped %d duplicate rows (same chat and message id seen in more than one place)", duplicates)
    # Uncompressed: the table is read once, by pairs, on the same machine. lz4 made ingest + pairs of a million
    # messages 0.1 s slower (of 3.4 s) to save 30 of 65 MB.
    write_parquet(frame, config.output, compression="uncompressed")
    by_kind = dict.fromkeys(KINDS, 0)
    for kind, count in frame.group_by("kind").len().iter_rows():
        by_kind[kind] = count
    report: IngestReport = {
        "files_read": len(files) - len(skipped),
        "files_skipped": len(skipped),
        "files_by_source": {source: sum(n.get("source") == source for n in notes) for source in SOURCES},
        "chats": frame.select(pl.col("chat_id").n_unique()).item(),
        "rows": frame.height,
        "rows_by_kind": by_kind,
        "duplicate_rows_dropped": duplicates,
        "rows_dropped": dropped,
        "edit_dates_cleared": edits_cleared,
        "files": [str(p) for p in files],
        "read_as": notes,
        "skipped": skipped,
    }
    write_json(report, config.report or default_report_path(config.output))
    save_resolved_config(config, config_path_for(config.output))
    log.info("ingest: %d files, %d chats, %d rows → %s", report["files_read"], report["chats"], frame.height,
             config.output)
    return report
