"""Typed decoding of Telegram Desktop JSON exports with msgspec (see ../shared/data/telegram/FORMAT.md).

Only the keys cookiebaker uses are decoded; every other key is skipped by the decoder without building
Python objects, which is what makes million-message exports fast to read.
"""

from __future__ import annotations

import re
import sys
from typing import Annotated, Union

import msgspec
from msgspec import UNSET, Meta, Raw, UnsetType

from cookiebaker.errors import ExportFormatError, InputFileError
from cookiebaker.ingest.readers import first_invalid_utf8

#: Ids are stored as 64-bit integers: a larger one is refused, naming where it is.
Int64 = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
Peer = Union[str, Int64, None]
Optional = Union[Raw, UnsetType]


class Entity(msgspec.Struct, gc=False):
    text: str = ""


Text = Union[str, list[Union[str, Entity]]]


class Message(msgspec.Struct, gc=False):
    id: Int64
    type: str = "message"
    date: Union[str, None] = None
    date_unixtime: Union[str, None] = None
    edited: Union[str, None] = None
    edited_unixtime: Union[str, None] = None
    sender: Union[str, None] = msgspec.field(default=None, name="from")
    from_id: Peer = None
    actor: Union[str, None] = None
    actor_id: Peer = None
    action: Union[str, None] = None
    forwarded_from: Union[str, None, UnsetType] = UNSET
    forwarded_from_id: Peer = None
    saved_from: Union[str, None, UnsetType] = UNSET
    reply_to_message_id: Union[Int64, None] = None
    reply_to_peer_id: Peer = None
    via_bot: Union[str, None] = None
    text: Text = ""
    photo: Optional = UNSET
    file: Optional = UNSET
    media_type: Union[str, None] = None
    poll: Optional = UNSET
    location_information: Optional = UNSET
    contact_information: Optional = UNSET
    place_name: Optional = UNSET
    game_title: Optional = UNSET
    invoice_information: Optional = UNSET
    todo_list: Optional = UNSET
    giveaway_information: Optional = UNSET
    giveaway_results: Optional = UNSET
    paid_stars_amount: Optional = UNSET


class Chat(msgspec.Struct, gc=False):
    name: Union[str, None] = None
    type: Union[str, None] = None
    id: Union[Int64, None] = None
    messages: Union[Raw, UnsetType] = UNSET


class ChatSection(msgspec.Struct, gc=False):
    chats: list[Chat] = msgspec.field(default_factory=list, name="list")


class ExportRoot(msgspec.Struct, gc=False):
    """Either a single-chat export (the root is the chat) or a full-account export (chats/left_chats)."""

    name: Union[str, None] = None
    type: Union[str, None] = None
    id: Union[Int64, None] = None
    messages: Union[Raw, UnsetType] = UNSET
    chats: Union[ChatSection, None, UnsetType] = UNSET
    left_chats: Union[ChatSection, None, UnsetType] = UNSET


_DECODER = msgspec.json.Decoder(ExportRoot)
_MESSAGES_DECODER = msgspec.json.Decoder(list[Message])
_ARRAY_START = re.compile(rb"\[([ \t\r\n]*)\{")
_JSON_WHITESPACE = frozenset(b" \t\r\n")
# Telegram Desktop writes control bytes as \xHH, which is not JSON. Pairs are matched left to right so
# that an escaped backslash followed by "x" (\\x41, a literal backslash in the text) is left alone.
_BAD_ESCAPE = re.compile(rb"\\\\|\\x([0-9A-Fa-f]{2})")
_HTML_START = re.compile(rb"^\s*(<!doctype html|<html|<head|<body|<div|<meta)", re.IGNORECASE)


def _fix_hex_escapes(data: bytes) -> bytes:
    return _BAD_ESCAPE.sub(lambda m: m.group(0) if m.group(1) is None else b"\\u00" + m.group(1), data)


def _sniff(path: str, data: bytes) -> bytes:
    """Reject what is obviously not a JSON export, with a message that says what it is instead."""
    if not data[:4096].strip() and not data.strip():
        raise ExportFormatError(path, "the file is empty")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ExportFormatError(path, "the file is UTF-16 encoded; Telegram Desktop writes UTF-8 JSON")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if _HTML_START.match(data[:512]):
        raise ExportFormatError(
            path,
            "this is Telegram's HTML export; export the chat again in Telegram Desktop with "
            "'Format: Machine-readable JSON'",
        )
    return data


def decode_export(path: str, data: bytes) -> tuple[list[Chat], bytes]:
    """Decode one export file's bytes into its chats (one for a single-chat export).

    The chats' ``messages`` stay raw JSON (validated, not yet decoded): the readers decode them a slice at a
    time (:func:`message_spans`, :func:`decode_slice`) or in bulk, so a million-message export never exists as
    a million Python objects at once.
    Also returns the buffer those raw arrays point into: ``data`` itself unless it had to be repaired.
    """
    data = _sniff(path, data)
    try:
        root = _DECODER.decode(data)
    except DECODE_ERRORS as exc:
        if b"\\x" not in data or isinstance(exc, RecursionError):
            raise _describe_decode_error(path, exc, data) from None
        try:  # Telegram Desktop's \xHH escapes: repaired, then decoded once more
            data = _fix_hex_escapes(data)
            root = _DECODER.decode(data)
        except DECODE_ERRORS as retry_exc:
            raise _describe_decode_error(path, retry_exc, data) from None
    return _chats_of(path, root), data


#: Everything msgspec raises for bytes it cannot decode. Which one a fault gives depends on msgspec's version
#: (invalid UTF-8 was a UnicodeDecodeError up to 0.22 and is a DecodeError since 0.23): the verdict below never
#: depends on the type, only on the bytes.
DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


#: What msgspec's messages say where it has no exception type of its own for the fault (checked against the
#: installed msgspec by tests/test_ingest.py::test_msgspec_still_says_what_the_reader_reads).
MSGSPEC_TRUNCATED = "truncated"
MSGSPEC_MALFORMED_PREFIX = "JSON is malformed: "


def _describe_decode_error(path: str, exc: Exception, data: bytes | memoryview | None = None,
                           offset: int = 0) -> InputFileError:
    """One line for a file msgspec refused, decided from the bytes where they tell (UTF-8, the top level) and
    from msgspec's exception otherwise. ``data`` starts at byte ``offset`` of the file."""
    if isinstance(exc, RecursionError):
        return ExportFormatError(path, f"the JSON nests too deeply (over about {sys.getrecursionlimit()} levels); "
                                       "Telegram Desktop never nests more than a few")
    invalid = first_invalid_utf8(data) if data is not None else None
    if invalid is None and isinstance(exc, UnicodeDecodeError):  # no bytes to look at: the exception's own offset
        invalid = exc.start
    if invalid is not None:
        return ExportFormatError(path, f"the file is not valid UTF-8 (byte {offset + invalid}); "
                                       "Telegram Desktop writes UTF-8 JSON")
    message = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        if data is not None and offset == 0 and not bytes(data[:64]).lstrip().startswith(b"{"):
            return ExportFormatError(path, "this JSON is not a Telegram Desktop export (the top level is not an object)")
        return ExportFormatError(path, f"this JSON is not a valid Telegram Desktop export: {message}")
    if MSGSPEC_TRUNCATED in message:
        return ExportFormatError(path, "the JSON ends early: the file is truncated (copy or export it again)")
    return ExportFormatError(path, f"the file is not valid JSON: {message.removeprefix(MSGSPEC_MALFORMED_PREFIX)}")


def _chats_of(path: str, root: ExportRoot) -> list[Chat]:
    if root.messages is not UNSET:
        if root.id is None:
            raise ExportFormatError(path, "the chat export has no chat 'id'")
        return [Chat(name=root.name, type=root.type, id=root.id, messages=root.messages)]
    sections = [s for s in (root.chats, root.left_chats) if s is not UNSET and s is not None]
    if not sections:
        raise ExportFormatError(
            path,
            "this JSON is not a Telegram Desktop export: it has neither 'messages' (a chat export) "
            "nor 'chats' (a full-account export)",
        )
    chats = [chat for section in sections for chat in section.chats]
    for index, chat in enumerate(chats):
        if chat.messages is UNSET:
            raise ExportFormatError(path, f"chat #{index} ({chat.name!r}) of the account export has no 'messages'")
        if chat.id is None:
            raise ExportFormatError(path, f"chat #{index} ({chat.name!r}) of the account export has no 'id'")
    return chats


class SliceMismatch(Exception):
    """A slice of a messages array did not decode on its own; the caller decodes the whole array instead."""


def message_spans(messages: Raw, chunk_bytes: int = 16 * 1024 * 1024) -> list[tuple[int, int]]:
    """Split a chat's raw ``messages`` array into spans of about ``chunk_bytes`` each, on message boundaries.

    Telegram Desktop pretty-prints its exports, and a raw newline can never be inside a JSON string, so a
    newline followed by exactly the first element's indentation and ``{`` starts the next element of the
    array. A file without that layout (minified, hand-edited) gives one span: the whole array. Offsets are
    relative to the raw array; :func:`slice_json` turns a span into a JSON array of its own.
    """
    view = memoryview(messages)
    head = _ARRAY_START.match(view)
    if len(view) <= chunk_bytes or head is None or b"\n" not in head.group(1):
        return [(0, len(view))]
    indent = head.group(1).rsplit(b"\n", 1)[1]
    element_start = re.compile(rb"\n" + re.escape(indent) + rb"\{")
    bounds = [head.end() - len(indent) - 2]
    while True:
        found = element_start.search(view, bounds[-1] + chunk_bytes)
        if found is None:
            break
        bounds.append(found.start())
    bounds.append(len(view) - 1)  # the last span stops before the closing "]"
    return list(zip(bounds, bounds[1:]))


def slice_json(raw: bytes | memoryview, last: bool) -> bytes:
    """The bytes of a span of array elements as a JSON array of its own.

    Every span but the ``last`` ends with the one comma that separates it from the next, and only that comma is
    taken off: a span that lacks it raises :class:`SliceMismatch`, and a doubled or trailing comma stays for the
    decoder to refuse, as it refuses it in the whole array.
    """
    view = memoryview(raw)
    stop = len(view)
    while stop and view[stop - 1] in _JSON_WHITESPACE:
        stop -= 1
    if not last:
        if not stop or view[stop - 1] != ord(","):
            raise SliceMismatch
        stop -= 1
    return b"".join((b"[", view[:stop], b"]"))  # one copy


def decode_slice(piece: bytes | memoryview) -> list[Message]:
    """Decode one slice (a span of :func:`message_spans` as a JSON array); :class:`SliceMismatch` if it is not
    valid on its own."""
    try:
        return _MESSAGES_DECODER.decode(piece)
    except DECODE_ERRORS:
        raise SliceMismatch from None


def decode_messages(path: str, messages: Raw, offset: int = 0) -> list[Message]:
    """Decode a whole raw ``messages`` array (which starts at byte ``offset`` of the file), with an error
    message that points at the bad message or byte."""
    try:
        return _MESSAGES_DECODER.decode(messages)
    except DECODE_ERRORS as exc:
        if isinstance(exc, msgspec.ValidationError):
            exc = msgspec.ValidationError(str(exc).replace("at `$", "at `$.messages", 1))
        raise _describe_decode_error(path, exc, memoryview(messages), offset) from None
