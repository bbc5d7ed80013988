"""The seam for chat sources: a reader turns one export file into the messages table (the contract every later
stage reads, ``cookiebaker.messages``). A reader is chosen by the file's content, not its name."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import polars as pl

from cookiebaker.errors import InputFileError

#: Bytes of a file's beginning that readers look at to recognise their format.
HEAD_BYTES = 4096


class Reader(Protocol):
    name: str

    def detect(self, head: bytes) -> bool:
        """Whether a file that begins with ``head`` is this reader's format."""

    def read(self, path: Path) -> pl.DataFrame:
        """The file as the messages table (``MESSAGE_SCHEMA``); InputFileError naming the file when it cannot."""


def readers() -> list[Reader]:
    from cookiebaker.ingest.telegram import TelegramReader

    return [TelegramReader()]


def reader_for(path: Path) -> Reader:
    """The first reader that recognises the file's content. A file none recognises goes to the first reader,
    whose error says what the file is instead (HTML, UTF-16, another JSON, truncated)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEAD_BYTES)
    except OSError as exc:
        raise InputFileError(path, f"cannot read the file: {exc.strerror or exc}") from None
    available = readers()
    return next((reader for reader in available if reader.detect(head)), available[0])
