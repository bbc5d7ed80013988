"""The straightforward implementation of ingest + pairs (json.load → pandas → a Python loop per row).

It applies the same rules as cookiebaker's columnar stages and is kept for two reasons: the benchmark
compares speed and memory against it, and the test suite checks that both produce the same pairs.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from cookiebaker.pairs.privacy import Scrubber  # noqa: E402

USER_SHIFT, CHANNEL_SHIFT = 1 << 32, 1 << 33


def _peer(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        return "user" + value if value.isdigit() else value
    value = int(value)
    if value >= CHANNEL_SHIFT:
        return f"channel{value - CHANNEL_SHIFT}"
    if value >= USER_SHIFT:
        return f"user{value - USER_SHIFT}"
    return f"user{value}"


def _flatten(text):
    if isinstance(text, str):
        return text
    if isinstance(text, list):
        return "".join(p if isinstance(p, str) else p.get("text", "") for p in text)
    return ""


def ingest(path: str) -> pd.DataFrame:
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    chats = [doc] if "messages" in doc else doc["chats"]["list"] + doc.get("left_chats", {}).get("list", [])
    frames = []
    for chat in chats:
        df = pd.DataFrame(chat["messages"])
        for column in ("from", "from_id", "actor", "actor_id", "forwarded_from", "saved_from", "via_bot",
                       "reply_to_message_id", "reply_to_peer_id", "date_unixtime"):
            if column not in df:
                df[column] = None
        out = pd.DataFrame()
        out["chat_id"] = [chat["id"]] * len(df)
        out["message_id"] = df["id"]
        out["kind"] = df["type"]
        out["date"] = pd.to_datetime(df["date_unixtime"].astype(float), unit="s")
        out["sender"] = [f if k == "message" else a for f, a, k in zip(df["from"], df["actor"], df["type"])]
        out["sender_id"] = [_peer(f if f is not None and f == f else a) for f, a in zip(df["from_id"], df["actor_id"])]
        out["text"] = df["text"].apply(_flatten)
        out["reply_to_message_id"] = df["reply_to_message_id"]
        out["reply_to_chat_id"] = df["reply_to_peer_id"].apply(_peer)
        out["forwarded"] = [("forwarded_from" in m) or ("saved_from" in m) for m in chat["messages"]]
        out["via_bot"] = df["via_bot"]
        frames.append(out)
    return pd.concat(frames).sort_values(["chat_id", "message_id"]).reset_index(drop=True)


def pairs(messages: pd.DataFrame, window_minutes: float = 5.0) -> pd.DataFrame:
    rows = messages.to_dict("records")
    index = {(r["chat_id"], r["message_id"]): i for i, r in enumerate(rows)}
    scrubber = Scrubber()

    def is_bot(r):
        return isinstance(r["sender"], str) and r["sender"].strip().lower().endswith("bot")

    def own(r):
        return r["kind"] == "message" and not r["forwarded"] and not isinstance(r["via_bot"], str)

    def is_reply(r):
        value = r["reply_to_message_id"]
        return value is not None and value == value

    out = []
    for i, m in enumerate(rows):
        if m["kind"] != "message" or not is_reply(m) or isinstance(m["reply_to_chat_id"], str):
            continue
        j = index.get((m["chat_id"], int(m["reply_to_message_id"])))
        if j is None:
            continue
        q = rows[j]
        if not own(m) or is_bot(m) or not own(q) or is_bot(q) or not m["text"] or not q["text"]:
            continue
        if m["sender_id"] is not None and m["sender_id"] == q["sender_id"]:
            continue
        ids, texts = [m["message_id"]], [m["text"]]
        k = i + 1
        while k < len(rows):
            n, p = rows[k], rows[k - 1]
            if (n["chat_id"] != m["chat_id"] or not own(n) or n["sender_id"] != m["sender_id"] or n["sender_id"] is None
                    or (n["date"] - p["date"]).total_seconds() > window_minutes * 60 or is_reply(n)):
                break
            ids.append(n["message_id"])
            if n["text"]:
                texts.append(n["text"])
            k += 1
        out.append({"query": scrubber.scrub(q["text"]), "response": scrubber.scrub("\n".join(texts)),
                    "chat_id": m["chat_id"], "query_message_id": q["message_id"], "response_message_ids": ids,
                    "query_sender_id": q["sender_id"], "response_sender_id": m["sender_id"]})
    return pd.DataFrame(out)


if __name__ == "__main__":
    frame = ingest(sys.argv[1])
    frame.to_parquet(sys.argv[2])
    result = pairs(frame)
    result.to_parquet(sys.argv[3])
    print(len(frame), len(result))
