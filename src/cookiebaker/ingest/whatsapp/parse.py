"""WhatsApp's "Export chat" text → messages, column by column (polars; no Python loop over lines).

A message starts with a header, in the phone's locale: iOS writes ``[date, time] Name: text``, Android
``date, time - Name: text`` (and ``date, time - text`` for system lines, which have no author). Dates are day,
month and year in some order with ``/ . -`` between them, years of two or four digits; times have 24 or 12 hours
(``AM``, ``pm``, ``a. m.``), seconds or not, sometimes after a locale word (Finnish ``klo``). A line without a
header continues the message before it.

The order of day, month and year is decided once for the whole file (:func:`date_order`), never line by line.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass

import polars as pl

from cookiebaker.messages import UTC_TIME

#: Invisible marks WhatsApp puts before ``[``, before system texts and media placeholders, around names.
MARKS = "\ufeff\u200e\u200f\u202a\u202c"
_SPACE = "[ \u00a0\u202f]"
#: A message header, up to the text that follows it. The same pattern serves polars (Rust regex) and Python's re.
HEADER = (rf"^(?P<head>(?P<open>\[)?(?P<a>\d{{1,4}})[./-](?P<b>\d{{1,2}})[./-](?P<c>\d{{1,4}}),?{_SPACE}+"
          rf"(?:klo{_SPACE}+)?(?P<h>\d{{1,2}})[:.](?P<mi>\d{{2}})(?:[:.](?P<s>\d{{2}}))?"
          rf"(?:{_SPACE}?(?P<ap>[AaPp]\.?{_SPACE}?[Mm]\.?))?(?:\]{_SPACE}|{_SPACE}-{_SPACE}))")
HEADER_RE = re.compile(HEADER)
#: ``Name:`` at the start of the text after a header (a name never holds a colon or a quote; the first colon ends
#: it). A system line (Android) has none.
AUTHOR = r'^([^:"]{1,100}?):'
#: Texts that may be more than a message (media, a deletion, an edit, a system line): only these go through the
#: slower checks.
SPECIAL = (r"^(?:[\ufeff\u200e\u200f\u202a\u202c<]|\.$|null$|This message was deleted|You deleted this message)"
           r"|omitted$|\(file attached\)|<This message was edited>\s*$")
EDITED = "<This message was edited>"
DELETED = ("This message was deleted", "You deleted this message")
#: Placeholders where media was left out of the export: the whole (first line of the) text, and its media type.
MEDIA = {
    "<Media omitted>": "file", "image omitted": "photo", "video omitted": "video_file", "audio omitted":
    "voice_message", "sticker omitted": "sticker", "GIF omitted": "animation", "document omitted": "file",
    "Contact card omitted": "contact", "null": "view_once",
}
#: iOS ``<attached: 00000012-PHOTO-2023-05-04-16-13-23.jpg>``; Android ``IMG-20230504-WA0001.jpg (file attached)``.
_ATTACHED = r"^<attached: [^>]*>$"
_ATTACHED_KIND = r"^<attached: \d+-(PHOTO|VIDEO|AUDIO|STICKER|GIF)-"
_FILE_ATTACHED = r"^\S+\.(\w+) \(file attached\)$"
_EXTENSIONS = {"jpg": "photo", "jpeg": "photo", "png": "photo", "webp": "sticker", "mp4": "video_file",
               "opus": "voice_message", "ogg": "voice_message", "m4a": "voice_message", "pdf": "file",
               "vcf": "contact"}
_ATTACHED_KINDS = {"PHOTO": "photo", "VIDEO": "video_file", "AUDIO": "voice_message", "STICKER": "sticker",
                   "GIF": "animation"}
#: System lines (English exports): what happened, by the words that say it.
SYSTEM_ACTIONS = (
    ("e2e_notice", "end-to-end encrypted"), ("create_group", "created group"), ("create_group", "created this group"),
    ("add_members", " added "), ("add_members", "were added"), ("join_by_link", "joined using"),
    ("remove_members", " removed "), ("leave", " left"), ("change_subject", "changed the subject"),
    ("change_subject", "changed the group name"), ("change_info", "changed this group's icon"),
    ("change_info", "changed the group description"), ("change_info", "deleted this group's icon"),
    ("security_code", "security code"), ("change_number", "changed their phone number"),
    ("call", "missed voice call"), ("call", "missed video call"), ("disappearing", "disappearing messages"),
)
_PHONE_NAME = re.compile(r"^\+?[\d ()\-.\u00a0\u202f]{6,}$")


class WhatsAppFormatError(ValueError):
    """The text is not a WhatsApp export, or one this reader cannot read as one; ``line`` is 1-based."""

    def __init__(self, line: int | None, problem: str) -> None:
        super().__init__(problem)
        self.line, self.problem = line, problem


@dataclass(frozen=True)
class Order:
    """Where day, month and year are in the dates (``dmy``, ``mdy``, ``ymd``) and how that was decided."""

    order: str
    decided_by: str


def lines_of(data: bytes) -> pl.Series:
    """The export's lines (a BOM and CRLF line endings removed), read by polars' multi-threaded CSV reader as one
    column (no quoting, a separator no export holds). UnicodeDecodeError where the bytes are not UTF-8."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    if b"\x00" not in data and (b"\r" not in data or b"\r\n" in data):
        try:
            frame = pl.read_csv(io.BytesIO(data), has_header=False, separator="\x00", quote_char=None,
                                new_columns=["line"], schema={"line": pl.String})
            return frame.get_column("line").fill_null("")
        except pl.exceptions.PolarsError:
            pass  # the plain split below gives the verdict
    lines = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n").split("\n")  # raises if not UTF-8
    if lines[-1] == "":  # the file's last newline ends its last line
        lines.pop()
    return pl.Series("line", lines, dtype=pl.String)


def headers(lines: pl.Series) -> pl.DataFrame:
    """Per line: the header's parts (null where the line is no header), the text after the header (``rest``) and
    the line without its leading marks."""
    # The streaming engine runs the regex on every core, a slice of the lines each (eagerly it runs on one).
    line = pl.col("line").str.strip_chars_start(MARKS)
    parts = pl.LazyFrame({"line": lines}).select(line.str.extract_groups(HEADER).struct.unnest(), line)
    return parts.with_columns(pl.col("a").is_not_null().alias("is_header"),
                              pl.col("line").str.slice(pl.col("head").str.len_chars().fill_null(0)).alias("rest")) \
        .collect(engine="streaming")


def date_order(parts: pl.DataFrame, chosen: str) -> Order:
    """Day, month and year for the whole file: as chosen, else a four-digit first part is the year; of the other
    two, a part above 12 is the day; else the part that changes more often from one message to the next. A file
    whose dates fit no single order (a part above 12 in both places, years in both places, brackets and dashes
    mixed) is refused, naming two of its lines."""
    heads = parts.lazy().select("is_header", "open", "a", "b", "c").with_row_index("row").filter("is_header")\
        .with_columns(pl.col("a").cast(pl.Int32).alias("x"), pl.col("b").cast(pl.Int32).alias("y"),
                      pl.col("c").cast(pl.Int32).alias("z")).collect(engine="streaming")
    _refuse_mixed(heads)
    if chosen != "auto":
        return Order(chosen, "the date_order option")
    if (heads["a"].str.len_chars() == 4).any():
        return Order("ymd", "a four-digit year comes first")
    first_day, second_day = (heads["x"] > 12).any(), (heads["y"] > 12).any()
    if first_day and second_day:
        raise _mixed(heads, heads["x"] > 12, heads["y"] > 12, "a part above 12 first and second")
    if first_day:
        return Order("dmy", "a first part above 12 (a day)")
    if second_day:
        return Order("mdy", "a second part above 12 (a day)")
    changes = heads.select((pl.col("x") != pl.col("x").shift(1)).sum().alias("x"),
                           (pl.col("y") != pl.col("y").shift(1)).sum().alias("y")).row(0)
    if changes[1] > changes[0]:
        return Order("mdy", "the second part changes more often (days change more often than months)")
    if changes[0] > changes[1]:
        return Order("dmy", "the first part changes more often (days change more often than months)")
    return Order("dmy", "no part above 12 and as many changes in both: day first assumed (set date_order)")


def _refuse_mixed(heads: pl.DataFrame) -> None:
    bracketed = heads["open"].is_not_null()
    if bracketed.any() and not bracketed.all():
        raise _mixed(heads, bracketed, ~bracketed, "iOS [brackets] and Android dashes")
    year_first, year_last = heads["a"].str.len_chars() == 4, heads["c"].str.len_chars() == 4
    if year_first.any() and (~year_first).any():
        raise _mixed(heads, year_first, ~year_first, "the year first and last")
    if year_last.any() and (~year_last).any():
        raise _mixed(heads, year_last, ~year_last, "four- and two-digit years")


def _mixed(heads: pl.DataFrame, one: pl.Series, other: pl.Series, what: str) -> WhatsAppFormatError:
    first, second = int(heads["row"].filter(one)[0]) + 1, int(heads["row"].filter(other)[0]) + 1
    return WhatsAppFormatError(min(first, second), f"the dates are written in more than one format ({what}: lines "
                                                   f"{min(first, second)} and {max(first, second)}); an export "
                                                   "has one, so export the chat again from the phone")


def _days_in_month(month: pl.Expr, year: pl.Expr) -> pl.Expr:
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    return (pl.when(month == 2).then(pl.when(leap).then(29).otherwise(28))
            .when(month.is_in([4, 6, 9, 11])).then(30).otherwise(31))


def timestamps(parts: pl.DataFrame, order: str) -> pl.Expr:
    """The headers' local times (read as UTC, as WhatsApp writes no zone); null where a date cannot be."""
    day, month, year = ({"dmy": ("a", "b", "c"), "mdy": ("b", "a", "c"), "ymd": ("c", "b", "a")}[order])
    d, m, y = (pl.col(name).cast(pl.Int32) for name in (day, month, year))
    y = pl.when(y < 100).then(y + 2000).otherwise(y)
    hour, minute, second = pl.col("h").cast(pl.Int32), pl.col("mi").cast(pl.Int32), pl.col("s").cast(pl.Int32).fill_null(0)
    pm = pl.col("ap").str.to_lowercase().str.starts_with("p").fill_null(False)
    hour = pl.when(pl.col("ap").is_not_null() & (hour == 12)).then(0).otherwise(hour) + pl.when(pm).then(12).otherwise(0)
    valid = ((m >= 1) & (m <= 12) & (d >= 1) & (d <= _days_in_month(m, y)) & (hour <= 23) & (minute <= 59)
             & (second <= 59)).fill_null(False)
    seconds = _days_since_epoch(y.cast(pl.Int64), m.cast(pl.Int64), d.cast(pl.Int64)) * 86400 + hour * 3600 \
        + minute * 60 + second
    return pl.when(valid).then(pl.from_epoch(seconds * 1_000_000, time_unit="us").dt.replace_time_zone("UTC"))


def _days_since_epoch(year: pl.Expr, month: pl.Expr, day: pl.Expr) -> pl.Expr:
    """Days from 1970-01-01 to a proleptic Gregorian date, in integer arithmetic (H. Hinnant's days_from_civil)."""
    year = year - (month <= 2).cast(pl.Int64)
    era = year // 400
    of_era = year - era * 400
    of_year = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    return era * 146097 + of_era * 365 + of_era // 4 - of_era // 100 + of_year - 719468


def messages(lines: pl.Series, parts: pl.DataFrame, order: str) -> pl.DataFrame:
    """One row per message: its time, author (null for a system line) and text, continuation lines joined."""
    if not parts["is_header"].any():
        raise WhatsAppFormatError(1, "no line starts like a WhatsApp message (date, time, then - or ])")
    first = int(parts["is_header"].arg_true()[0])
    if lines.slice(0, first).str.strip_chars(MARKS + " \t").str.len_chars().sum():
        raise WhatsAppFormatError(1, "the text before the first message is not WhatsApp's (line 1 has no date and "
                                     "time)")
    bracketed = bool(parts["open"].is_not_null().any())
    rows = parts.lazy().slice(first).with_columns(pl.col("is_header").cum_sum().alias("message"))
    more = rows.filter(~pl.col("is_header")).group_by("message", maintain_order=True).agg(
        pl.col("line").str.join("\n").alias("more"))
    heads = rows.select("is_header", "message", "open", "a", "b", "c", "h", "mi", "s", "ap", "rest").filter("is_header")
    heads = heads.join(more, on="message", how="left", maintain_order="left")
    heads = heads.with_columns(pl.col("rest").str.extract(AUTHOR, 1).alias("name"))
    name = pl.col("name")
    text = pl.when(name.is_not_null()).then(pl.col("rest").str.slice(name.str.len_chars() + 1).str.strip_prefix(" "))\
        .otherwise(pl.col("rest"))
    text = pl.when((pl.col("more") != "") & name.is_not_null()) \
        .then(pl.concat_str(text, pl.lit("\n"), pl.col("more"))).otherwise(text)
    return heads.select(
        timestamps(heads, order).alias("date"),
        name.str.strip_chars(MARKS + " ~\u202f\u00a0").alias("author"),
        text.alias("text"),
        pl.lit(bracketed).alias("ios"),
    ).collect(engine="streaming")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()


def chat_id_of(name: str) -> int:
    """A stable 63-bit id for a chat's name."""
    return int(_digest("whatsapp chat", name)[:16], 16) & (2**63 - 1)


def _first_line(text: pl.Expr) -> pl.Expr:
    return text.str.split("\n").list.first().str.strip_chars(MARKS + " ")


def classify(frame: pl.DataFrame) -> pl.DataFrame:
    """Kinds, media, deletions, edits and system actions: what a message is, and its text as training text (a
    system line's own text stays in ``raw``, for the group's name). Only the texts :data:`SPECIAL` flags (and
    system lines) go through the checks; the others are plain messages."""
    flagged = frame.lazy().select(pl.col("author").is_null() | pl.col("text").str.contains(SPECIAL))
    rows = flagged.collect(engine="streaming").to_series().arg_true()
    special = _classify_special(frame[rows])
    n = frame.height
    columns = {"kind": pl.repeat("message", n, dtype=pl.String, eager=True),
               "action": pl.repeat(None, n, dtype=pl.String, eager=True),
               "media_type": pl.repeat(None, n, dtype=pl.String, eager=True),
               "edited": pl.repeat(None, n, dtype=UTC_TIME, eager=True),
               "raw": pl.repeat(None, n, dtype=pl.String, eager=True),
               "text": frame["text"], "author": frame["author"]}
    for name, column in columns.items():
        columns[name] = column.scatter(rows, special[name]) if len(rows) else column
    return frame.select("date").with_columns(**columns)


def _classify_special(frame: pl.DataFrame) -> pl.DataFrame:
    first = _first_line(pl.col("text"))
    body = pl.col("text").str.strip_chars_start(MARKS)
    edited = body.str.strip_chars_end().str.ends_with(EDITED)
    body = pl.when(edited).then(body.str.strip_chars_end().str.strip_suffix(EDITED).str.strip_chars_end(MARKS + " "))\
        .otherwise(body)
    attached = pl.coalesce(
        pl.when(first.str.contains(_ATTACHED))
        .then(first.str.extract(_ATTACHED_KIND, 1).replace_strict(_ATTACHED_KINDS, default="file",
                                                                 return_dtype=pl.String).fill_null("file")),
        pl.when(first.str.contains(_FILE_ATTACHED))
        .then(first.str.extract(_FILE_ATTACHED, 1).str.to_lowercase().replace_strict(
            _EXTENSIONS, default="file", return_dtype=pl.String)),
        first.replace_strict(MEDIA, default=None, return_dtype=pl.String),
    )
    view_once = pl.col("author").is_not_null() & (pl.col("text") == ".")  # "Name:." : a view-once photo or video
    media = pl.when(view_once).then(pl.lit("view_once")).otherwise(attached)
    deleted = pl.col("author").is_not_null() & (first.str.starts_with(DELETED[0]) | (first == DELETED[1]))
    # iOS marks system lines (attributed to a person or the group) and media with U+200E; Android writes system
    # lines without an author.
    marked = pl.col("text").str.starts_with("\u200e") & pl.col("ios")
    system = pl.col("author").is_null() | (marked & media.is_null())
    lowered = pl.concat_str(pl.col("author").fill_null(""), pl.lit(": "), pl.col("text")).str.to_lowercase()
    action = pl.lit("other")
    for name, words in reversed(SYSTEM_ACTIONS):
        action = pl.when(lowered.str.contains(words, literal=True)).then(pl.lit(name)).otherwise(action)
    caption = pl.col("text").str.split("\n").list.slice(1).list.join("\n")
    # Lazily: the expressions' common parts (the first line, the media type) are computed once.
    return frame.lazy().with_columns(
        pl.when(system | deleted).then(pl.lit("service")).otherwise(pl.lit("message")).alias("kind"),
        pl.when(deleted).then(pl.lit("delete_message")).when(system).then(action).alias("action"),
        pl.when(system | deleted).then(None).otherwise(media).alias("media_type"),
        pl.when(system | deleted | view_once).then(pl.lit(""))
        .when(media.is_not_null()).then(caption).otherwise(body).alias("text"),
        pl.when(edited & ~system).then(pl.col("date")).alias("edited"),
        pl.when(system).then(None).otherwise(pl.col("author")).alias("author"),
        pl.when(system).then(pl.col("text")).alias("raw"),
    ).collect()


def senders(frame: pl.DataFrame, chat: str) -> pl.DataFrame:
    """Display names and ids: an id is a digest of the name within the chat; a sender shown as a phone number
    keeps no readable number (``Contact`` and the digest's start)."""
    names = frame["author"].unique().drop_nulls().to_list()
    ids = {name: _digest("whatsapp sender", chat, name)[:16] for name in names}
    shown = {name: (f"Contact {ids[name][:6]}" if _PHONE_NAME.match(name) else name) for name in names}
    return frame.with_columns(
        pl.col("author").replace_strict(shown, default=None, return_dtype=pl.String).alias("sender"),
        pl.format("whatsapp:{}", pl.col("author").replace_strict(ids, default=None, return_dtype=pl.String))
        .alias("sender_id"),
    )
