"""The straightforward WhatsApp reader: a Python loop with a regex per line, then pandas, as the common WhatsApp
parsers work (chat-miner, whatstk). It applies cookiebaker's rules (the same header pattern, date order, system
lines, media, deletions, edits and senders) and is kept for two reasons: the benchmark compares speed and memory
against it, and the tests hold cookiebaker's columnar reader to the same table.
"""

from __future__ import annotations

import hashlib
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from cookiebaker.ingest.whatsapp import parse  # noqa: E402  (the patterns, not the columnar code)

AUTHOR = re.compile(parse.AUTHOR)
SUBJECT = re.compile(r'(?:created group|changed the subject (?:from .* )?to|changed the group name (?:from .* )?to) '
                     r'"(?P<name>[^"]+)"')
GROUP_ACTIONS = {"create_group", "add_members", "remove_members", "change_subject", "join_by_link"}


def _order(heads: list[dict]) -> str:
    if any(len(h["a"]) == 4 for h in heads):
        return "ymd"
    if any(int(h["a"]) > 12 for h in heads):
        return "dmy"
    if any(int(h["b"]) > 12 for h in heads):
        return "mdy"
    first = sum(a["a"] != b["a"] for a, b in zip(heads, heads[1:])) + 1
    second = sum(a["b"] != b["b"] for a, b in zip(heads, heads[1:])) + 1
    return "mdy" if second > first else "dmy"


def _time(h: dict, order: str) -> datetime | None:
    day, month, year = {"dmy": ("a", "b", "c"), "mdy": ("b", "a", "c"), "ymd": ("c", "b", "a")}[order]
    y = int(h[year]) + (2000 if int(h[year]) < 100 else 0)
    hour = int(h["h"])
    if h["ap"]:
        hour = (0 if hour == 12 else hour) + (12 if h["ap"].lower().startswith("p") else 0)
    try:
        return datetime(y, int(h[month]), int(h[day]), hour, int(h["mi"]), int(h["s"] or 0), tzinfo=timezone.utc)
    except ValueError:
        return None


def _media(first: str, author: str | None, text: str) -> str | None:
    if author is not None and text == ".":
        return "view_once"
    attached = re.match(parse._ATTACHED, first)
    if attached:
        kind = re.match(parse._ATTACHED_KIND, first)
        return parse._ATTACHED_KINDS[kind.group(1)] if kind else "file"
    file = re.match(parse._FILE_ATTACHED, first)
    if file:
        return parse._EXTENSIONS.get(file.group(1).lower(), "file")
    return parse.MEDIA.get(first)


def _action(author: str | None, text: str) -> str:
    lowered = f"{author or ''}: {text}".lower()
    return next((name for name, words in parse.SYSTEM_ACTIONS if words in lowered), "other")


def read(path: str, name: str | None = None) -> pd.DataFrame:
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    lines = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":  # the file's last newline ends its last line
        lines.pop()
    messages: list[dict] = []
    for line in lines:
        stripped = line.lstrip(parse.MARKS)
        found = parse.HEADER_RE.match(stripped)
        if found:
            messages.append({**found.groupdict(), "lines": [stripped[found.end():]]})
        elif messages:
            messages[-1]["lines"].append(stripped)
    order = _order(messages)
    ios = any(m["open"] for m in messages)
    rows = []
    for m in messages:
        first_line, more = m["lines"][0], "\n".join(m["lines"][1:])
        author_match = AUTHOR.match(first_line)
        author = author_match.group(1).strip(parse.MARKS + " ~\u202f\u00a0") if author_match else None
        text = first_line[author_match.end():].removeprefix(" ") if author_match else first_line
        if more:
            text = f"{text}\n{more}" if author_match else first_line
        system = author is None or (ios and text.startswith("\u200e") and _media(
            text.split("\n")[0].strip(parse.MARKS + " "), author, text) is None)
        rows.append({"date": _time(m, order), "author": author, "text": text, "system": system})
    chat = name or next((SUBJECT.search(r["text"]).group("name") for r in rows if r["system"]
                         and SUBJECT.search(r["text"])), None) or Path(path).stem
    out = []
    for number, r in enumerate(rows, start=1):
        author, text = r["author"], r["text"]
        body = text.lstrip(parse.MARKS)
        edited = body.rstrip().endswith(parse.EDITED)
        if edited:
            body = body.rstrip().removesuffix(parse.EDITED).rstrip(parse.MARKS + " ")
        first = text.split("\n")[0].strip(parse.MARKS + " ")
        media = _media(first, author, text)
        deleted = author is not None and (first.startswith(parse.DELETED[0]) or first == parse.DELETED[1])
        system = author is None or (ios and text.startswith("\u200e") and media is None)
        if system or deleted:
            kind, action, media_type, clean = "service", "delete_message" if deleted else _action(author, text), None, ""
        else:
            kind, action, media_type = "message", None, media
            clean = "" if media == "view_once" else ("\n".join(text.split("\n")[1:]) if media else body)
        person = None if system else author
        digest = hashlib.sha256("\0".join(("whatsapp sender", chat, person)).encode()).hexdigest()[:16] \
            if person is not None else None
        shown = (f"Contact {digest[:6]}" if parse._PHONE_NAME.match(person) else person) if person else None
        out.append({"source": "whatsapp", "chat_id": parse.chat_id_of(chat), "chat_name": chat, "message_id": number,
                    "kind": kind, "date": r["date"], "sender": shown,
                    "sender_id": f"whatsapp:{digest}" if digest else None, "text": clean, "media_type": media_type,
                    "action": action, "edited": r["date"] if edited and not system else None})
    frame = pd.DataFrame(out)
    group = bool(frame["action"].isin(GROUP_ACTIONS).any()) or frame["sender_id"].dropna().nunique() > 2
    frame["chat_type"] = "private_group" if group else "personal_chat"
    return frame


def pairs(frame: pd.DataFrame, window_minutes: float = 5.0) -> pd.DataFrame:
    """Implicit reply pairs, a row at a time: a message another sender writes within the window of the message
    before it answers it; the response is the reply and the rest of its sender's burst."""
    from cookiebaker.pairs.privacy import Scrubber

    rows = frame.to_dict("records")
    scrubber = Scrubber()

    def is_bot(r: dict) -> bool:
        return isinstance(r["sender"], str) and r["sender"].strip().lower().endswith("bot")

    def within(a: dict, b: dict) -> bool:
        return a["date"] is not None and b["date"] is not None and \
            (b["date"] - a["date"]).total_seconds() <= window_minutes * 60

    def continues(prev: dict, row: dict) -> bool:  # the same sender's burst
        return (prev["kind"] == "message" and row["kind"] == "message" and row["sender_id"] is not None
                and row["sender_id"] == prev["sender_id"] and within(prev, row))

    out = []
    for i, m in enumerate(rows):
        if m["kind"] != "message" or (i > 0 and continues(rows[i - 1], m)) or i == 0:
            continue
        q = rows[i - 1]
        if q["kind"] != "message" or q["sender_id"] == m["sender_id"] or not within(q, m):
            continue
        if is_bot(m) or is_bot(q) or not m["text"] or not q["text"]:
            continue
        texts, k = [m["text"]], i + 1
        while k < len(rows) and continues(rows[k - 1], rows[k]):
            if rows[k]["text"]:
                texts.append(rows[k]["text"])
            k += 1
        out.append({"query": scrubber.scrub(q["text"]), "response": scrubber.scrub("\n".join(texts)),
                    "query_message_id": q["message_id"], "response_message_id": m["message_id"]})
    return pd.DataFrame(out)


if __name__ == "__main__":
    result = read(sys.argv[1])
    result.to_parquet(sys.argv[2])
    found = pairs(result)
    found.to_parquet(sys.argv[3])
    print(len(result), len(found))
