"""Stage ``ingest``: Telegram Desktop JSON exports → one Parquet table of messages (one row per entry)."""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import polars as pl
from msgspec import Raw
from pydantic import Field

from cookiebaker.config import StageConfig, config_path_for, save_resolved_config
from cookiebaker.errors import InputFileError
from cookiebaker.ingest.columns import chat_frame, empty_frame, messages_frame
from cookiebaker.ingest.decode import (
    SliceMismatch,
    decode_export,
    decode_messages,
    decode_slice,
    message_spans,
    slice_json,
)
from cookiebaker.ingest.schema import KINDS, MESSAGE_COLUMNS, MESSAGE_SCHEMA
from cookiebaker.io import write_json, write_parquet
from cookiebaker.progress import progress_bar

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


# Files larger than this are decoded by worker processes (one per core), a slice of messages each.
PARALLEL_MIN_BYTES = 32 * 1024 * 1024
SLICE_BYTES = 16 * 1024 * 1024


def _slice_frame(piece: bytes | memoryview) -> tuple[pl.DataFrame, object]:
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of small objects: the cyclic collector would only slow decoding down
    try:
        return messages_frame(decode_slice(piece))
    finally:
        if gc_was_enabled:
            gc.enable()


def _warm_up() -> None:
    """Runs first in each worker: nothing to do, the import of this module was the point."""


def _file_slice_frame(path: str, begin: int, end: int) -> tuple[pl.DataFrame, object]:
    """Worker side: read one span of the export straight from the file (the page cache) and decode it."""
    with open(path, "rb") as file:
        file.seek(begin)
        raw = file.read(end - begin)
    return _slice_frame(slice_json(raw, whole=False))


class _Workers:
    """A process pool, started only when a file is large enough to gain from it.

    Workers are spawned (polars' threads make fork unsafe) and read their spans from the file themselves,
    so slices never travel through a pipe; only the finished columns come back.
    """

    def __init__(self) -> None:
        self.pool: ProcessPoolExecutor | None = None
        self.count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def for_size(self, size: int) -> ProcessPoolExecutor | None:
        if size < PARALLEL_MIN_BYTES or self.count < 2:
            return None
        if self.pool is None:
            self.pool = ProcessPoolExecutor(self.count, mp_context=multiprocessing.get_context("spawn"))
            for _ in range(self.count):  # start the workers now: their imports overlap the parent's reading
                self.pool.submit(_warm_up)
        return self.pool

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None


def _buffer_offset(buffer: bytes, view: memoryview) -> int:
    address = np.frombuffer(view, np.uint8).ctypes.data if len(view) else 0
    return address - np.frombuffer(buffer, np.uint8).ctypes.data


def _chat_slices(path: Path, raw: Raw, buffer: bytes, file_bytes: bool, pool: Executor | None) -> list:
    view = memoryview(raw)
    spans = message_spans(raw, SLICE_BYTES)
    if len(spans) == 1:
        return [_slice_frame(view)]
    if pool is None or not file_bytes:
        return [_slice_frame(slice_json(view[begin:end], whole=False)) for begin, end in spans]
    base = _buffer_offset(buffer, view)
    futures = [pool.submit(_file_slice_frame, str(path), base + begin, base + end) for begin, end in spans]
    return [future.result() for future in futures]


def read_export(path: str | Path, workers: _Workers | None = None) -> pl.DataFrame:
    """Read one export file (single chat or full account) into the messages table."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputFileError(path, f"cannot read the file: {exc.strerror or exc}") from None
    chats, buffer = decode_export(str(path), data)
    pool = workers.for_size(len(data)) if workers else None
    frames = []
    for chat in chats:
        try:
            try:
                slices = _chat_slices(path, chat.messages, buffer, buffer is data, pool)
            except BrokenProcessPool:
                log.warning("worker processes failed (is the calling script missing `if __name__ == "
                            "'__main__':`?); decoding %s in this process", path)
                workers.close()  # type: ignore[union-attr]
                pool = None
                slices = _chat_slices(path, chat.messages, buffer, False, None)
        except SliceMismatch:
            slices = [messages_frame(decode_messages(str(path), chat.messages))]
        frames.append(chat_frame(chat.id, chat.name, chat.type, slices, str(path)))
    del chats, data, buffer
    return pl.concat(frames, how="vertical") if frames else empty_frame()


def _strictly_ordered(frame: pl.DataFrame) -> bool:
    """Whether rows are sorted by (chat_id, message_id) with no key twice: then there is nothing to do."""
    chat_step, id_step = pl.col("chat_id").diff(), pl.col("message_id").diff()
    return frame.select(((chat_step > 0) | ((chat_step == 0) & (id_step > 0))).slice(1).all()).item()


def deduplicate(frame: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Sorted by (chat_id, message_id), one row per key: the latest edit wins, then the file read last."""
    if _strictly_ordered(frame):
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
    workers = _Workers()
    if any(path.stat().st_size >= PARALLEL_MIN_BYTES for path in files):
        workers.for_size(PARALLEL_MIN_BYTES)
    try:
        with progress_bar() as progress:
            task = progress.add_task("ingest", total=len(files))
            for path in files:
                progress.update(task, description=f"ingest {path.name}")
                try:
                    frames.append(read_export(path, workers))
                except InputFileError as exc:
                    if not config.skip_invalid:
                        raise
                    log.warning("skipping %s", exc)
                    skipped.append({"file": str(path), "error": exc.problem})
                progress.advance(task)
    finally:
        workers.close()
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
