"""Privacy filters for sample text: phone numbers, e-mail addresses, payment-card numbers and the names of senders
who opted out are replaced by placeholders. Only rows that can hold one go through the Python matcher."""

from __future__ import annotations

import re
from collections import Counter

import polars as pl

PLACEHOLDERS = {"email": "[EMAIL]", "card": "[CARD]", "phone": "[PHONE]", "name": "[NAME]"}
#: Opted-out senders' display names shorter than this are not looked for in texts (too many ordinary words).
MIN_NAME_CHARACTERS = 3

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}")
_CARD = re.compile(r"(?<![\w+])(?:\d[ -]?){12,18}\d(?!\w)")
_PHONE = re.compile(r"(?<![\w+])(?:\+|\(\+?)?\d[\d ().\-]{6,}\d(?!\w)")
# Cheap (vectorized) supersets of what the patterns above can match: only rows with a hit go through Python.
# An e-mail has '@', then characters of a domain label, then a dot; a card or phone number has a digit, at least
# six digits or separators, and a digit.
_EMAIL_HINT = r"@[^.@ \t\n]+\."
_NUMBER_HINT = r"\d[\d ().\-]{6,}\d"
_DATE_LIKE = re.compile(r"^\d{4}[./-]\d{1,2}[./-]\d{1,2}|^\d{1,2}[./-]\d{1,2}[./-]\d{4}")
_THOUSANDS = re.compile(r"^\d{1,3}(?:([ .,])\d{3})(?:\1\d{3})*$")


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _is_card(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _is_phone(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    if not 9 <= len(digits) <= 15:
        return False
    if match.startswith(("+", "(+")):
        return True
    return not (_DATE_LIKE.match(match) or _THOUSANDS.match(match))


class Scrubber:
    """Replaces personal data in text and counts every replacement by kind."""

    def __init__(self, *, emails: bool = True, cards: bool = True, phones: bool = True,
                 names: list[str] | tuple[str, ...] = ()) -> None:
        self.emails, self.cards, self.phones = emails, cards, phones
        names = sorted({n.strip() for n in names if n and len(n.strip()) >= MIN_NAME_CHARACTERS}, key=len, reverse=True)
        # A name as a whole word (its first and last characters not inside a longer word), longest first; the
        # vectorized pre-filter (no look-arounds there) looks for the name anywhere.
        self.names = re.compile("|".join(rf"(?<!\w){re.escape(n)}(?!\w)" for n in names)) if names else None
        self._names_hint = "|".join(re.escape(n) for n in names)
        self.counts: Counter[str] = Counter()

    @property
    def enabled(self) -> bool:
        return self.emails or self.cards or self.phones or self.names is not None

    def scrub(self, text: str) -> str:
        if self.names is not None:
            text, n = self.names.subn(PLACEHOLDERS["name"], text)
            self.counts["name"] += n
        if self.emails:
            text, n = _EMAIL.subn(PLACEHOLDERS["email"], text)
            self.counts["email"] += n
        if self.cards:
            text = _CARD.sub(lambda m: self._replace(m.group(0), "card") if _is_card(m.group(0)) else m.group(0), text)
        if self.phones:
            text = _PHONE.sub(lambda m: self._replace(m.group(0), "phone") if _is_phone(m.group(0)) else m.group(0),
                              text)
        return text

    def _replace(self, _match: str, kind: str) -> str:
        self.counts[kind] += 1
        return PLACEHOLDERS[kind]

    def scrub_column(self, frame: pl.DataFrame, column: str) -> pl.DataFrame:
        """Scrub one String column; rows that cannot hold personal data are left untouched (and fast)."""
        if not self.enabled or frame.is_empty():
            return frame
        hints = (([_EMAIL_HINT] if self.emails else []) + ([_NUMBER_HINT] if self.cards or self.phones else [])
                 + ([self._names_hint] if self.names is not None else []))
        candidate = pl.col(column).str.contains("|".join(hints))
        rows = frame.select(candidate.fill_null(False)).to_series().arg_true()
        if rows.is_empty():
            return frame
        values = frame.get_column(column)
        cleaned = pl.Series([self.scrub(text) for text in values.gather(rows).to_list()], dtype=pl.String)
        return frame.with_columns(values.scatter(rows, cleaned))

    def scrub_turns(self, frame: pl.DataFrame, column: str) -> pl.DataFrame:
        """Scrub the ``content`` of every turn in a list-of-turns column (a sample's earlier messages)."""
        if not self.enabled or frame.is_empty():
            return frame
        dtype = frame.schema[column]
        turns = (frame.select(pl.int_range(pl.len()).alias("_sample"), column)
                 .explode(column, keep_nulls=False).unnest(column))
        if turns.is_empty():
            return frame
        fields = [f.name for f in dtype.inner.fields]  # type: ignore[union-attr]
        scrubbed = self.scrub_column(turns, "content").group_by("_sample", maintain_order=True).agg(
            pl.struct(fields).alias(column))
        every = pl.DataFrame({"_sample": pl.int_range(frame.height, eager=True)}).cast({"_sample": turns["_sample"].dtype})
        rebuilt = every.join(scrubbed, on="_sample", how="left", maintain_order="left").select(
            pl.coalesce(column, pl.lit([], dtype=dtype)).cast(dtype))
        return frame.with_columns(rebuilt.to_series())

    def report(self) -> dict[str, int]:
        return {kind: self.counts.get(kind, 0) for kind in PLACEHOLDERS}
