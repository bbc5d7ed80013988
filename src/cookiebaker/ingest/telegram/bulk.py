"""The bulk reader for large chats: DuckDB's JSON reader (C++, one thread per core) instead of msgspec.

The chat's ``messages`` array is cut into spans of whole messages (:func:`decode.message_spans`), each span
is written as a JSON array file of its own (a kernel copy when the export is on disk), and DuckDB parses all
of them at once into the raw columns of :func:`columns.raw_frame`; :func:`columns.finish_frame` then applies
the export's rules, the same code as for the msgspec decoder. Anything DuckDB would read differently from
msgspec (a repeated key, a ``\\xHH`` escape, a type msgspec refuses, a message without an id) makes DuckDB
fail, and the caller falls back to msgspec: the tests hold both readers to the same table on every real
export. One shortcut rests on how Telegram Desktop writes: the text is joined from ``text_entities`` when
every message has them (the exporter writes ``text`` and ``text_entities`` from the same entities; a chat
where some message lacks them is read from ``text``).

Every span is also decoded by msgspec while DuckDB parses (:func:`_check`): a message msgspec refuses sends the
chat back to it, so both readers give one verdict. The same pass finds what DuckDB cannot see, a key written as
``null``: ``"forwarded_from": null`` (a forward from a deleted account) reads to DuckDB like no key at all.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import re
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import msgspec
import polars as pl
from msgspec import UNSET

from cookiebaker.ingest.telegram.columns import _RARE_MEDIA, bare_peer_id, canonical_peer, peer_number
from cookiebaker.ingest.telegram.decode import (
    DECODE_ERRORS,
    Chat,
    ExportRoot,
    Message,
    SliceMismatch,
    message_spans,
    slice_json,
)

log = logging.getLogger(__name__)

#: Chats whose ``messages`` array is at least this large are read by DuckDB.
BULK_MIN_BYTES = 8 * 1024 * 1024
#: DuckDB parses one span file per thread at a time; spans are several per thread, within these bounds.
SPAN_BYTES = 16 * 1024 * 1024
MIN_SPAN_BYTES = 1024 * 1024
#: The exact decoder checks a span this much at a time (see :func:`_check`).
CHECK_BYTES = 128 * 1024
#: DuckDB's limit on one message, its default and least (it reads messages up to twice this; Telegram's longest, a
#: 4,096-character text, takes a few kB). A chat with a larger message is read by msgspec. A far larger limit (1 GB)
#: made DuckDB take fresh memory for every read: 90k more page faults, 0.2 CPU-seconds more on a million messages.
LARGEST_MESSAGE_BYTES = 16 * 1024 * 1024

_PEERS = ("from_id", "actor_id", "forwarded_from_id", "reply_to_peer_id")
_PRESENCE = ("forwarded_from", "saved_from", "photo", "file", "paid_stars_amount", *(key for key, _ in _RARE_MEDIA))
# Every key is read as text (an object or a number as its JSON), so that any value a message may hold reads.
_COLUMNS = dict.fromkeys(("type", "date", "date_unixtime", "edited", "edited_unixtime", "from", "actor", "action",
                          "via_bot", "media_type", *_PEERS, *_PRESENCE), "VARCHAR")
_COLUMNS.update(id="BIGINT", reply_to_message_id="BIGINT")
_RARE_CASES = " ".join(f"WHEN {key} IS NOT NULL THEN '{name}'" for key, name in _RARE_MEDIA)
# Two ways to the flattened text. Exports since tdesktop 4.1.2 (2022) carry ``text_entities``, a list of
# {type, text} whose texts make up the text; reading it typed is cheaper than reading ``text`` as JSON (a string,
# or a list of strings and entities) and taking that apart.
_TEXT_FROM_ENTITIES = (
    "coalesce(array_to_string(list_transform(text_entities, lambda part: coalesce(part.text, '')), ''), '')",
    {"text_entities": 'STRUCT("text" VARCHAR)[]'},
)
_TEXT_FROM_JSON = ("""CASE
    WHEN starts_with(text, '"') THEN text ->> '$'
    WHEN starts_with(text, '[') THEN coalesce(array_to_string(list_transform(CAST(text AS JSON[]), lambda part:
      CASE WHEN starts_with(part, '"') THEN part ->> '$' ELSE coalesce(part ->> 'text', '') END), ''), '')
    ELSE '' END""", {"text": "JSON"})  # JSON values come minified: the first character tells their type
# The raw columns of columns.raw_frame, as text: how dates are read is columns.finish_frame's rule, for both readers.
_SELECT = f"""
SELECT
  id AS message_id,
  coalesce(type, 'message') AS kind,
  date_unixtime,
  date,
  edited_unixtime,
  edited,
  "from",
  from_id,
  actor,
  actor_id,
  action,
  forwarded_from,
  forwarded_from IS NOT NULL AS forwarded_present,
  saved_from,
  saved_from IS NOT NULL AS saved_present,
  forwarded_from_id,
  reply_to_message_id,
  reply_to_peer_id,
  via_bot,
  {{text}} AS text,
  {{text_missing}} AS text_missing,
  media_type,
  photo IS NOT NULL AS photo,
  file IS NOT NULL AS file,
  CASE {_RARE_CASES} END AS rare_media,
  paid_stars_amount IS NOT NULL AS paid_media
FROM read_json($files, format = 'array', columns = $columns, maximum_object_size = $largest)
"""
_FIRST_KEY = re.compile(rb"[ \t\r\n]*\{[ \t]*\r?\n([ \t]*)\"")
_HEAD_BYTES = 1 << 20
_MESSAGES = msgspec.json.Decoder(list[Message])


class BulkUnsupported(Exception):
    """This chat cannot be read by the bulk reader; the caller uses the msgspec decoder instead."""


class _EntitiesMissing(BulkUnsupported):
    """Some message has no ``text_entities``: the text has to come from ``text``."""


# What copy_file_range and sendfile answer where they cannot copy between these two files.
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF}


class Source:
    """The bytes a chat is read from: an export file on disk (copied by the kernel) or a buffer in memory."""

    def __init__(self, buffer: bytes | mmap.mmap, fd: int | None = None) -> None:
        self.buffer, self.fd = buffer, fd

    def copy(self, out: int, begin: int, end: int) -> None:
        while begin < end:
            done = self._copy_some(out, begin, end)
            if done <= 0:
                raise BulkUnsupported("could not copy the messages")
            begin += done

    def _copy_some(self, out: int, begin: int, end: int) -> int:
        if self.fd is not None:
            try:  # within one file system
                return os.copy_file_range(self.fd, out, end - begin, begin)
            except OSError as exc:
                if exc.errno not in _NO_COPY_RANGE:
                    raise
            try:  # the scratch folder is on another file system (a tmpfs /tmp, say): still a copy in the kernel
                return os.sendfile(out, self.fd, begin, end - begin)
            except OSError as exc:
                if exc.errno not in _NO_COPY_RANGE:
                    raise
        with memoryview(self.buffer) as whole:
            return os.write(out, whole[begin:end])


@contextmanager
def mapped_file(path: Path) -> Iterator[Source]:
    with open(path, "rb") as file:
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            yield Source(mapped, file.fileno())


def locate_single_chat(path: str, source: Source) -> tuple[Chat, int, int] | None:
    """A single-chat export as Telegram Desktop lays it out (indented, ``messages`` last): its chat, and where
    its ``messages`` array starts and ends, found without reading the messages. None for any other layout.

    Everything but the array is validated here; the array itself is validated span by span when it is read.
    """
    buffer = source.buffer
    head = buffer[:_HEAD_BYTES]
    first_key = _FIRST_KEY.match(head)
    if first_key is None:
        return None
    indent = first_key.group(1)
    opening = re.search(rb"\n" + re.escape(indent) + rb'"messages": \[', head)
    tail_start = max(0, len(buffer) - 4096)
    closing = re.search(rb"\n" + re.escape(indent) + rb"\][ \t\r\n]*\}[ \t\r\n]*\Z", buffer[tail_start:])
    if opening is None or closing is None:
        return None
    begin, end = opening.end() - 1, tail_start + closing.start() + 1 + len(indent) + 1
    if end <= begin:
        return None
    try:
        root = msgspec.json.decode(head[:begin] + b"[]" + buffer[end:], type=ExportRoot)
    except DECODE_ERRORS:
        return None
    if root.messages is UNSET or root.id is None or root.chats is not UNSET or root.left_chats is not UNSET:
        return None
    return Chat(name=root.name, type=root.type, id=root.id), begin, end


def read_messages(source: Source, begin: int, end: int, threads: int) -> tuple[pl.DataFrame, object]:
    """The raw columns of the messages array at ``buffer[begin:end]`` and the first sender peer as written."""
    spans, entities = _layout(source.buffer, begin, end, threads)
    with tempfile.TemporaryDirectory(prefix="cookiebaker-ingest-") as scratch:
        with ThreadPoolExecutor(threads) as pool, ThreadPoolExecutor(1) as checker:
            written = _write_spans(source, begin, spans, Path(scratch), pool)
            checking = checker.submit(_check, written)  # each span as soon as it is written, while DuckDB parses
            import duckdb  # noqa: F401  loaded while the kernel copies the spans (only large chats need it)

            raw = _parse_any([future.result() for future in written], threads, entities)
            checked = checking.result()
    if checked.refused is not None:
        raise BulkUnsupported(f"the exact decoder refuses a message ({checked.refused}): it gives the verdict")
    first = raw.select(pl.coalesce("from_id", "actor_id").drop_nulls().first()).item()
    # One pass of expressions: DuckDB's columns come in chunks, and a column computed on its own would not be.
    raw = raw.with_columns(
        pl.col("forwarded_present") | pl.col("message_id").is_in(checked.null_forwards),
        pl.col("saved_present") | pl.col("message_id").is_in(checked.null_saves),
        *(_canonical(raw, name, canonical_peer, pl.String) for name in _PEERS[:3]),
        _canonical(raw, "reply_to_peer_id", bare_peer_id, pl.Int64).alias("reply_to_chat_id"),
    )
    return raw, None if first is None else _peer_value(first)


def _layout(buffer: bytes | mmap.mmap, begin: int, end: int, threads: int) -> tuple[list[tuple[int, int]], bool]:
    """The array's spans, and whether its messages carry ``text_entities``."""
    with memoryview(buffer) as whole, whole[begin:end] as array:
        head = re.match(rb"\[([ \t\r\n]*)\{", array)
        if head is None or b"\n" not in head.group(1):
            raise BulkUnsupported("the messages array is not laid out one message per indented block")
        indent = head.group(1).rsplit(b"\n", 1)[1]
        # Several spans per thread, so that the threads finish together.
        spans = message_spans(array, min(SPAN_BYTES, max(MIN_SPAN_BYTES, len(array) // (4 * threads))))
        first_message = bytes(array[head.start():head.start() + (1 << 16)]).split(b"\n" + indent + b"}", 1)[0]
    return spans, b'"text_entities"' in first_message


def _write_spans(source: Source, begin: int, spans: list[tuple[int, int]], scratch: Path,
                 pool: ThreadPoolExecutor) -> list[Future]:
    """One JSON array file per span, written by ``pool`` (the copies run in the kernel, without the GIL).

    Spans end after the comma that separates them from the next one. Returns the futures of the file names.
    """
    if spans[0][0] == 0:  # the one span is the whole array, brackets included
        return [pool.submit(_write_file, str(scratch / "000000.json"), source, begin, begin + spans[0][1], b"", b"")]
    files = []
    for index, (start, stop) in enumerate(spans):
        start, stop = begin + start, begin + stop
        last_bytes = bytes(source.buffer[max(start, stop - 256):stop])
        trimmed = last_bytes.rstrip()
        is_last = index == len(spans) - 1
        if trimmed.endswith(b",") == is_last:
            raise BulkUnsupported("the messages array is not a comma-separated list of objects")
        stop -= len(last_bytes) - len(trimmed) + (0 if is_last else 1)
        files.append(pool.submit(_write_file, str(scratch / f"{index:06d}.json"), source, start, stop, b"[", b"]"))
    return files


def _write_file(name: str, source: Source, start: int, stop: int, before: bytes, after: bytes) -> str:
    out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(out, before)
        source.copy(out, start, stop)
        os.write(out, after)
    finally:
        os.close(out)
    return name


class _Checked(NamedTuple):
    """What the exact decoder made of the spans: why it refuses one (or None), and the ids of the messages whose
    ``forwarded_from`` / ``saved_from`` is written as null, which DuckDB cannot tell from a missing key."""

    refused: str | None
    null_forwards: list[int]
    null_saves: list[int]


def _check(files: list[Future]) -> _Checked:
    """Decode every span (the futures of their files) with the exact decoder. It refuses what DuckDB would read as
    text (a type it does not take, an id over 64 bits, nesting too deep), so only this keeps the two readers'
    verdicts the same.

    Each span is decoded a piece of CHECK_BYTES at a time, the pieces cut as the msgspec reader cuts its slices
    (exactly one comma between two pieces): the objects of one piece fit in the memory Python keeps, so that it is
    reused rather than handed back to the kernel and faulted in again for the next one (214k page faults → 6k, the
    check 1.7 → 0.9 s on a million messages).
    """
    checked = _Checked(None, [], [])
    for file in files:
        span = Path(file.result()).read_bytes()
        pieces = message_spans(span, CHECK_BYTES)
        try:
            for index, (start, stop) in enumerate(pieces):
                messages = _MESSAGES.decode(span if len(pieces) == 1 else
                                            slice_json(memoryview(span)[start:stop], last=index == len(pieces) - 1))
                checked.null_forwards.extend(m.id for m in messages if m.forwarded_from is None)
                checked.null_saves.extend(m.id for m in messages if m.saved_from is None)
        except SliceMismatch:
            return checked._replace(refused="the messages are not separated by single commas")
        except DECODE_ERRORS as exc:
            return checked._replace(refused=str(exc).splitlines()[0][:200] or type(exc).__name__)
    return checked


def _parse_any(files: list[str], threads: int, entities: bool) -> pl.DataFrame:
    """Parse with ``text_entities`` when the first message has them; with ``text`` if some message does not."""
    if entities:
        try:
            return _parse(files, threads, entities=True)
        except _EntitiesMissing:
            log.debug("some messages have no text_entities: reading text instead")
    return _parse(files, threads, entities=False)


def _parse(files: list[str], threads: int, entities: bool) -> pl.DataFrame:
    import duckdb  # imported here: only large chats need it

    text, columns = _TEXT_FROM_ENTITIES if entities else _TEXT_FROM_JSON
    query = _SELECT.format(text=text, text_missing="text_entities IS NULL" if entities else "false")
    # String views are what polars holds strings as: the columns then cross over without a conversion.
    settings = {"threads": max(1, threads), "arrow_output_version": "1.5", "produce_arrow_string_view": True,
                # Memory DuckDB frees stays with its allocator for the next span instead of going back to the kernel
                # and being faulted in again: 30% fewer page faults and 0.3 s less system time on a million messages.
                "allocator_flush_threshold": "64GB", "allocator_bulk_deallocation_flush_threshold": "64GB"}
    with duckdb.connect(config=settings) as connection:
        try:
            # Through the Arrow C stream interface: no pyarrow needed.
            raw = pl.DataFrame(connection.sql(query, params={"files": files, "columns": {**_COLUMNS, **columns},
                                                             "largest": LARGEST_MESSAGE_BYTES}))
        except (duckdb.Error, pl.exceptions.ComputeError) as exc:  # a query error may surface through the stream
            raise BulkUnsupported(str(exc).splitlines()[0]) from None
    if raw["message_id"].null_count():
        raise BulkUnsupported("a message has no id")
    if raw["text_missing"].any():
        raise _EntitiesMissing
    return raw.drop("text_missing")


def _peer_value(text: str) -> str | int:
    """A peer as the export wrote it. DuckDB gives integer peers (tdesktop 2020-21) as their digits."""
    number = peer_number(text)
    return text if number is None else number


def _canonical(raw: pl.DataFrame, name: str, convert, dtype: pl.DataType) -> pl.Expr:  # noqa: ANN001
    """A peer column → canonical values, converted once per distinct value (peers repeat a lot)."""
    peers = raw.get_column(name)
    if dtype == pl.String and not peers.str.contains("^-?[0-9]").any():
        return pl.col(name)  # already canonical ('user123', 'channel123'), as in every export since tdesktop 2.7.2
    mapping = {v: convert(_peer_value(v)) for v in peers.unique().drop_nulls().to_list()}
    return pl.col(name).replace_strict(mapping, default=None, return_dtype=dtype)
