"""Telegram Desktop's JSON exports (single chat or full account, every tdesktop version since 2019) → the
messages table. Small chats are decoded by msgspec a slice at a time; chats of BULK_MIN_BYTES and more by
DuckDB's JSON reader (``bulk``), which hands anything it would read differently back to msgspec."""

from __future__ import annotations

import gc
import logging
import os
import re
from pathlib import Path

import polars as pl
from msgspec import Raw

from cookiebaker.errors import InputFileError
from cookiebaker.ingest.readers import Read, ReadOptions
from cookiebaker.messages import empty_messages
from cookiebaker.ingest.telegram import bulk
from cookiebaker.ingest.telegram.columns import chat_frame, finish_frame, messages_frame
from cookiebaker.ingest.telegram.decode import (
    Chat,
    SliceMismatch,
    decode_export,
    decode_messages,
    decode_slice,
    message_spans,
    slice_json,
)

__all__ = ["TelegramReader", "read_export"]

log = logging.getLogger(__name__)

# A Telegram Desktop export opens a JSON object whose first keys name a chat ("name", "type", "id", "messages")
# or an account ("about", "personal_information", "chats", ...).
_EXPORT_KEYS = re.compile(rb'^\s*\{\s*"(name|type|id|messages|about|personal_information|profile_pictures|'
                          rb'contacts|frequent_contacts|sessions|web_sessions|other_data|chats|left_chats)"\s*:')


class TelegramReader:
    """Telegram Desktop → Export chat history → Machine-readable JSON."""

    name = "telegram"
    suffixes = (".json",)

    def detect(self, head: bytes, path: Path) -> bool:
        return _EXPORT_KEYS.match(head.removeprefix(b"\xef\xbb\xbf")) is not None

    def read(self, path: Path, options: ReadOptions) -> Read:
        return Read(read_export(path))


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


def _decoded_slices(path: Path, raw: Raw, buffer: bytes) -> list[tuple[pl.DataFrame, object]]:
    """A chat's messages through msgspec, a slice at a time (the whole array at once if it cannot be sliced)."""
    view = memoryview(raw)
    spans = message_spans(raw, SLICE_BYTES)
    try:
        if len(spans) == 1:
            return [_slice_frame(view)]
        return [_slice_frame(slice_json(view[begin:end], last=index == len(spans) - 1))
                for index, (begin, end) in enumerate(spans)]
    except SliceMismatch:
        return [messages_frame(decode_messages(str(path), raw, _buffer_offset(buffer, memoryview(raw))))]


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
    bulk_refused = False  # the bulk reader refused the file's one chat: it is not asked again
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
                    bulk_refused = True
        data = path.read_bytes()
    except OSError as exc:
        raise InputFileError(path, f"cannot read the file: {exc.strerror or exc}") from None
    chats, buffer = decode_export(str(path), data)
    frames = []
    for chat in chats:
        frame = None
        if not bulk_refused and len(chat.messages) >= bulk.BULK_MIN_BYTES:
            begin = _buffer_offset(buffer, memoryview(chat.messages))
            frame = _bulk_frame(path, chat, bulk.Source(buffer), begin, begin + len(chat.messages))
        if frame is None:
            frame = chat_frame(chat.id, chat.name, chat.type, _decoded_slices(path, chat.messages, buffer),
                                str(path))
        frames.append(frame)
    del chats, data, buffer
    return pl.concat(frames, how="vertical") if frames else empty_messages()


