"""A Telegram-shaped chat (the demo's sample chats) written as the other apps export it: WhatsApp's Android text
and DiscordChatExporter's JSON. The same conversation through every reader."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import discord_fixtures as fx


def _when(entry: dict) -> datetime:
    return datetime.fromtimestamp(int(entry["date_unixtime"]), tz=timezone.utc)


def to_whatsapp(chat: dict, path: Path) -> Path:
    """Android layout, day first, 24 hours; no reply links (WhatsApp has none), media left out."""
    lines = []
    for entry in chat["messages"]:
        stamp = _when(entry).strftime("%d/%m/%Y, %H:%M")
        if entry["type"] == "service":
            lines.append(f'{stamp} - {entry["actor"]} created group "{chat["name"]}"' if entry["action"] ==
                         "create_group" else f"{stamp} - {entry['actor']} pinned a message")
            continue
        text = entry["text"] if isinstance(entry["text"], str) else "".join(
            p if isinstance(p, str) else p["text"] for p in entry["text"])
        if not text:
            text = "<Media omitted>"
        lines.append(f"{stamp} - {entry['from']}: {text}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def to_discord(chat: dict, path: Path) -> Path:
    """One channel; replies as references, forwards as forwards, the group's bot a bot."""
    ids = {entry["id"]: str(1_200_000_000_000_000_000 + entry["id"]) for entry in chat["messages"]}
    users: dict[str, dict] = {}
    out = []
    for entry in chat["messages"]:
        who = entry.get("from") or entry.get("actor")
        who_id = (entry.get("from_id") or entry.get("actor_id") or "user0").removeprefix("user")
        author = users.setdefault(who_id, fx.user(who_id, who.lower().replace(" ", "_"), who, bot=who.endswith("Bot")))
        stamp = _when(entry).isoformat(timespec="milliseconds")
        if entry["type"] == "service":
            kind = "ChannelPinnedMessage" if entry["action"] == "pin_message" else "RecipientAdd"
            out.append(fx.message(ids[entry["id"]], author, f"{who} did something.", kind=kind, at=stamp))
            continue
        reply = entry.get("reply_to_message_id")
        forward = "forwarded_from" in entry
        out.append(fx.message(
            ids[entry["id"]], author, "" if forward else entry["text"], at=stamp,
            kind="Reply" if reply and not forward else "Default",
            reference=fx.reference("1", fx.OTHER_CHANNEL, "Forward") if forward else
            fx.reference(ids.get(reply, "1"), fx.CHANNEL) if reply else None,
            forwarded={"timestamp": stamp, "timestampEdited": None, "content": entry["text"], "attachments": [],
                       "embeds": [], "stickers": []} if forward else None,
            attachments=[{"id": "1", "url": "p.jpg", "fileName": "p.jpg", "fileSizeBytes": 1}]
            if "photo" in entry else None,
            stickers=[{"id": "2", "name": "lol", "format": "Png", "sourceUrl": "s.png"}]
            if entry.get("media_type") == "sticker" else None))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fx.export(out), ensure_ascii=False, indent=2), encoding="utf-8")
    return path
