"""Stage ``ingest``: Telegram Desktop JSON exports → one Parquet table of messages (one row per entry)."""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path

import polars as pl
from msgspec import Raw
from pydantic import Field

from cookiebaker.config import StageConfig, config_path_for, save_resolved_config
from cookiebaker.errors import InputFileError
from cookiebaker.ingest import bulk
from cookiebaker.ingest.columns import chat_frame, empty_frame, finish_frame, messages_frame
from cookiebaker.ingest.decode import (
    Chat,
    SliceMismatch,
    decode_export,
    decode_messages,
    decode_slice,
    message_spans,
    slice_json,
)
from cookiebaker.ingest.schema import KINDS, MESSAGE_COLUMNS, MESSAGE_SCHEMA, sorted_by_chat_and_id
from cookiebaker.io import write_json, write_parquet

__all__ = ["IngestConfig", "run", "read_export", "find_export_files", "MESSAGE_COLUMNS", "MESSAGE_SCHEMA"]

log = logging.getLogger(__name__)


class IngestConfig(StageConfig):
    inputs: list[str] = Field(default_factory=list)
    """Export files and folders; a folder means every ``*.json`` below it, in sorted order."""
    output: str = "data/messages.parquet"
    """Where the messages table is written (Parquet, atomically)."""
    report: str | None = None
    """Where the ingest report (JSON, a DVC metric) is written; default: ``<output stem>_ingest.json``
    beside the output."""
    skip_invalid: bool = False
    """Continue past files that are not readable Telegram JSON exports, listing them in the report,
    instead of failing on the first one."""


def find_export_files(inputs: list[str]) -> list[Path]:
    """Expand files and folders into the list of export files to read, in a stable order."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.json") if p.is_file())
            if not found:
                raise InputFileError(path, "the folder holds no *.json export files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise InputFileError(path, "no such file or folder")
    unique: dict[Path, Path] = {}
    for file in files:
        unique.setdefault(file.resolve(), file)  # a file named twice (directly and in a folder) is read once
    return list(unique.values())


# The msgspec decoder works a slice of this many bytes at a time, so that a large chat it has to read never
# exists as millions of Python objects at once.
SLICE_BYTES = 16 * 1024 * 1024


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _slice_frame(piece: bytes | memoryview) -> tuple[pl.DataFrame, object]:
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of small objects: the cyclic collector would only slow decoding down
    try:
        return messages_frame(decode_slice(piece))
    finally:
        if gc_was_enabled:
            gc.enable()


def _decoded_slices(path: Path, raw: Raw) -> list[tuple[pl.DataFrame, object]]:
    """A chat's messages through msgspec, a slice at a time (the whole array at once if it cannot be sliced)."""
    view = memoryview(raw)
    spans = message_spans(raw, SLICE_BYTES)
    try:
        if len(spans) == 1:
            return [_slice_frame(view)]
        return [_slice_frame(slice_json(view[begin:end])) for begin, end in spans]
    except SliceMismatch:
        return [messages_frame(decode_messages(str(path), raw))]


def _buffer_offset(buffer: bytes, view: memoryview) -> int:
    import numpy as np  # only large account exports need it

    address = np.frombuffer(view, np.uint8).ctypes.data if len(view) else 0
    return address - np.frombuffer(buffer, np.uint8).ctypes.data


def _bulk_frame(path: Path, chat: Chat, source: bulk.Source, begin: int, end: int) -> pl.DataFrame | None:
    """A large chat through DuckDB, or None when only msgspec can read it (then nothing was lost but time)."""
    try:
        raw, first_peer = bulk.read_messages(source, begin, end, _cpu_count())
    except bulk.BulkUnsupported as exc:
        log.debug("%s: chat %s is read by the exact decoder instead of the bulk reader: %s", path, chat.id, exc)
        return None
    return chat_frame(chat.id, chat.name, chat.type, [(finish_frame(raw), first_peer)], str(path))


def read_export(path: str | Path) -> pl.DataFrame:
    """Read one export file (single chat or full account) into the messages table."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size and size >= bulk.BULK_MIN_BYTES:
            with bulk.mapped_file(path) as source:  # a single-chat export is read without decoding it whole
                located = bulk.locate_single_chat(str(path), source)
                if located is not None:
                    chat, begin, end = located
                    frame = _bulk_frame(path, chat, source, begin, end)
                    if frame is not None:
                        return frame
        data = path.read_bytes()
    except OSError as exc:
        raise InputFileError(path, f"cannot read the file: {exc.strerror or exc}") from None
    chats, buffer = decode_export(str(path), data)
    frames = []
    for chat in chats:
        frame = None
        if len(chat.messages) >= bulk.BULK_MIN_BYTES:
            begin = _buffer_offset(buffer, memoryview(chat.messages))
            frame = _bulk_frame(path, chat, bulk.Source(buffer), begin, begin + len(chat.messages))
        if frame is None:
            frame = chat_frame(chat.id, chat.name, chat.type, _decoded_slices(path, chat.messages), str(path))
        frames.append(frame)
    del chats, data, buffer
    return pl.concat(frames, how="vertical") if frames else empty_frame()


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


def run(config: IngestConfig) -> dict:
    """Read every export, write the messages table, its report and the resolved config. Returns the report."""
    files = find_export_files(config.inputs)
    if not files:
        raise InputFileError("(inputs)", "no export files or folders were given")
    frames: list[pl.DataFrame] = []
    skipped: list[dict[str, str]] = []
    from cookiebaker.progress import progress_bar  # rich: only the command itself needs it, not its readers

    with progress_bar() as progress:
        task = progress.add_task("ingest", total=len(files))
        for path in files:
            progress.update(task, description=f"ingest {path.name}")
            try:
                frames.append(read_export(path))
            except InputFileError as exc:
                if not config.skip_invalid:
                    raise
                log.warning("skipping %s", exc)
                skipped.append({"file": str(path), "error": exc.problem})
            progress.advance(task)
    if not frames:
        raise InputFileError("(inputs)", "none of the input files is a readable Telegram JSON export")
    frame = pl.concat(frames, how="vertical")
    del frames
    frame, duplicates = deduplicate(frame)
    if duplicates:
        log.info("dropped %d duplicate rows (same chat and message id seen in more than one place)", duplicates)
    write_parquet(frame, config.output)
    by_kind = dict.fromkeys(KINDS, 0)
    for kind, count in frame.group_by("kind").len().iter_rows():
        by_kind[kind] = count
    report = {
        "files_read": len(files) - len(skipped),
        "files_skipped": len(skipped),
        "chats": frame.select(pl.col("chat_id").n_unique()).item(),
        "rows": frame.height,
        "rows_by_kind": by_kind,
        "duplicate_rows_dropped": duplicates,
        "files": [str(p) for p in files],
        "skipped": skipped,
    }
    write_json(report, config.report or default_report_path(config.output))
    save_resolved_config(config, config_path_for(config.output))
    log.info("ingest: %d files, %d chats, %d rows → %s", report["files_read"], report["chats"], frame.height,
             config.output)
    return report
