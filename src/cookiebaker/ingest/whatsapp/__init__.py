"""WhatsApp's "Export chat" (a ``.txt``, or the ``.zip`` with ``_chat.txt`` inside) → the messages table.

Both layouts are read, iOS ``[date, time] Name: text`` and Android ``date, time - Name: text``, in the phone's
locale (``parse``). An export has no reply links, so ``pairs`` finds replies by who answers whom in time (its
``implicit_replies``); it has no ids either: a chat's id is a digest of its name (the file's name, or the
group's subject), a sender's a digest of their name within the chat.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import polars as pl

from cookiebaker.errors import ExportFormatError, InputFileError
from cookiebaker.ingest.readers import Read, ReadOptions, first_invalid_utf8
from cookiebaker.ingest.whatsapp import parse
from cookiebaker.messages import as_messages

__all__ = ["WhatsAppReader", "read_text"]

#: "WhatsApp Chat with Anna.txt" (Android), "WhatsApp Chat - Family.zip" (iOS): the chat's name after the prefix.
_NAMED = re.compile(r"^WhatsApp Chat(?: with | - )(?P<name>.+)$", re.IGNORECASE)
_SUBJECT = re.compile(r'(?:created group|changed the subject (?:from .* )?to|changed the group name (?:from .* )?to) '
                      r'"(?P<name>[^"]+)"')
_ZIP_MAGIC = b"PK\x03\x04"


class WhatsAppReader:
    """WhatsApp → a chat → More → Export chat (without media is enough)."""

    name = "whatsapp"
    suffixes = (".txt", ".zip")

    def detect(self, head: bytes, path: Path) -> bool:
        if head.startswith(_ZIP_MAGIC):
            try:
                with zipfile.ZipFile(path) as archive:
                    member = _chat_member(archive)
                    return member is not None and _looks_like(archive.read(member)[:4096])
            except (OSError, zipfile.BadZipFile):
                return False
        return _looks_like(head)

    def read(self, path: Path, options: ReadOptions) -> Read:
        data, name = _chat_bytes(path)
        try:
            frame, order = read_text(data, name, str(path), options.date_order)
        except UnicodeDecodeError:
            raise ExportFormatError(path, f"the file is not valid UTF-8 (byte {first_invalid_utf8(data)}); WhatsApp "
                                          "writes UTF-8 text") from None
        except parse.WhatsAppFormatError as exc:
            where = f"line {exc.line}: " if exc.line else ""
            raise ExportFormatError(path, f"{where}{exc.problem}") from None
        return Read(frame, {"date_order": order.order, "date_order_decided_by": order.decided_by,
                            "messages": frame.height})


def _looks_like(head: bytes) -> bool:
    """The first non-empty line is a WhatsApp message header."""
    text = head.decode("utf-8", errors="ignore").removeprefix("\ufeff")
    first = next((line for line in text.splitlines() if line.strip(parse.MARKS + " \t")), "")
    return parse.HEADER_RE.match(first.lstrip(parse.MARKS)) is not None


def _chat_member(archive: zipfile.ZipFile) -> str | None:
    """The chat's text in an export zip: ``_chat.txt`` (iOS), ``WhatsApp Chat with ….txt`` (Android), else the
    only text file."""
    texts = [name for name in archive.namelist() if name.lower().endswith(".txt")]
    preferred = [name for name in texts if Path(name).name == "_chat.txt" or _NAMED.match(Path(name).stem)]
    if preferred:
        return preferred[0]
    return texts[0] if len(texts) == 1 else None


def _chat_bytes(path: Path) -> tuple[bytes, str | None]:
    """The export's text and, where the names say it, the chat's name."""
    try:
        with open(path, "rb") as handle:
            zipped = handle.read(4) == _ZIP_MAGIC
        if not zipped:
            return path.read_bytes(), _name_from(path.stem)
        with zipfile.ZipFile(path) as archive:
            member = _chat_member(archive)
            if member is None:
                raise ExportFormatError(path, "the zip holds no WhatsApp chat (_chat.txt or 'WhatsApp Chat with "
                                              "….txt')")
            return archive.read(member), _name_from(Path(member).stem) or _name_from(path.stem) or path.stem
    except zipfile.BadZipFile as exc:
        raise ExportFormatError(path, f"the zip cannot be read ({exc})") from None
    except OSError as exc:
        raise InputFileError(path, f"cannot read the file: {exc.strerror or exc}") from None


def _name_from(stem: str) -> str | None:
    found = _NAMED.match(stem)
    return found.group("name").strip() if found else None


def read_text(data: bytes | str, name: str | None, source_file: str,
              chosen_order: str = "auto") -> tuple[pl.DataFrame, parse.Order]:
    """An export's text (UTF-8 bytes) as the messages table, and the date order it was read with."""
    lines = parse.lines_of(data.encode("utf-8") if isinstance(data, str) else data)
    parts = parse.headers(lines)
    order = parse.date_order(parts, chosen_order)
    frame = parse.classify(parse.messages(lines, parts, order.order))
    chat = name or _subject(frame) or Path(source_file).stem
    frame = parse.senders(frame, chat)
    group = bool((frame["action"].is_in(["create_group", "add_members", "remove_members", "change_subject",
                                         "join_by_link"])).any()) or frame["sender_id"].drop_nulls().n_unique() > 2
    return as_messages(frame.with_columns(
        pl.lit("whatsapp").alias("source"),
        pl.lit(parse.chat_id_of(chat), pl.Int64).alias("chat_id"),
        pl.lit(chat).alias("chat_name"),
        pl.lit("private_group" if group else "personal_chat").alias("chat_type"),
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("message_id"),
        pl.lit(False).alias("forwarded"),
        pl.lit(source_file).alias("source_file"),
    )), order


def _subject(frame: pl.DataFrame) -> str | None:
    """The group's subject where a system line names it: the first (its creation's, where the export has it)."""
    found = frame["raw"].str.extract(_SUBJECT.pattern, 1).drop_nulls()
    return found[0] if len(found) else None
