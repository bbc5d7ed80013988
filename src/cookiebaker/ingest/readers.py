"""The seam for chat sources: a reader turns one export file into the messages table (the contract every later
stage reads, ``cookiebaker.messages``). A reader is chosen by the file's content, not its name.

Adding a chat app is one module with a reader class and one line in :data:`READERS`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal, Protocol

import polars as pl

from cookiebaker.errors import InputFileError

#: Bytes of a file's beginning that readers look at to recognise their format.
HEAD_BYTES = 4096

#: Every reader, as module:class, in the order they are asked whether a file is theirs.
READERS = (
    "cookiebaker.ingest.telegram:TelegramReader",
    "cookiebaker.ingest.discord:DiscordReader",
    "cookiebaker.ingest.whatsapp:WhatsAppReader",
)

DateOrder = Literal["auto", "dmy", "mdy", "ymd"]


@dataclass(frozen=True)
class ReadOptions:
    """What a user may tell a reader (``ingest`` options)."""

    date_order: DateOrder = "auto"
    """WhatsApp: the order of day, month and year in the exported dates; auto: detected from the whole file."""


@dataclass
class Read:
    """What a reader made of one file: the messages table and what it decided on the way (for the report)."""

    frame: pl.DataFrame
    notes: dict = field(default_factory=dict)


class Reader(Protocol):
    name: str
    suffixes: tuple[str, ...]
    """File name endings a folder is searched for (the content decides, not the name)."""

    def detect(self, head: bytes, path: Path) -> bool:
        """Whether a file that begins with ``head`` is this reader's format."""

    def read(self, path: Path, options: ReadOptions) -> Read:
        """The file as the messages table (``MESSAGE_SCHEMA``); InputFileError naming the file when it cannot."""


@cache
def readers() -> tuple[Reader, ...]:
    instances = []
    for entry in READERS:
        module, name = entry.split(":")
        instances.append(getattr(importlib.import_module(module), name)())
    return tuple(instances)


def export_suffixes() -> tuple[str, ...]:
    """Every file ending some reader looks for (a folder expands to these files)."""
    return tuple(dict.fromkeys(suffix for reader in readers() for suffix in reader.suffixes))


def first_invalid_utf8(data: bytes | memoryview | None) -> int | None:
    """The offset of the first byte where ``data`` stops being UTF-8, or None when it is valid UTF-8."""
    try:
        bytes(data or b"").decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start
    return None


def reader_for(path: Path) -> Reader:
    """The first reader that recognises the file's content. A file none recognises goes to the first reader whose
    file endings it has (else the first reader), whose error says what the file is instead (HTML, UTF-16, another
    JSON, truncated, not a chat export)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEAD_BYTES)
    except OSError as exc:
        raise InputFileError(path, f"cannot read the file: {exc.strerror or exc}") from None
    available = readers()
    found = next((reader for reader in available if reader.detect(head, path)), None)
    if found is not None:
        return found
    suffix = path.suffix.lower()
    return next((reader for reader in available if suffix in reader.suffixes), available[0])
