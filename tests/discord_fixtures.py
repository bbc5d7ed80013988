"""DiscordChatExporter JSON exports built from its schema (``JsonMessageWriter.cs``): no real Discord export under
a licence we may use has replies and threads, so the tests write their own, covering every field the reader uses
and the ones it must skip."""

from __future__ import annotations

import json
from pathlib import Path

GUILD, CHANNEL = "9000000000000000001", "9000000000000000002"
OTHER_CHANNEL = "9000000000000000003"


def user(id_: str, name: str, nickname: str | None = None, bot: bool = False, roles: bool = True) -> dict:
    entry = {"id": id_, "name": name, "discriminator": "0000", "nickname": nickname or name, "color": "#1ABC9C",
             "isBot": bot, "avatarUrl": f"https://cdn.discordapp.com/avatars/{id_}/a.png"}
    if roles:
        entry["roles"] = [{"id": "7", "name": "member", "color": None, "position": 1}]
    return entry


ANN = user("1001", "ann_k", "Ann")
BEN = user("1002", "benny", None)
CARL = user("1003", "carl", "Carl the Great")
HELPER = user("1999", "Carl-bot-ish", "Reminders", bot=True)


def message(id_: str, author: dict, content: str = "", *, kind: str = "Default", at: str = "2024-03-01T10:00:00.000+00:00",
            edited: str | None = None, reference: dict | None = None, attachments: list | None = None,
            stickers: list | None = None, embeds: list | None = None, forwarded: dict | None = None,
            old: bool = False) -> dict:
    entry = {"id": id_, "type": kind, "timestamp": at, "timestampEdited": edited, "callEndedTimestamp": None,
             "isPinned": False, "content": content, "author": author, "attachments": attachments or [],
             "embeds": embeds or [], "reactions": [{"emoji": {"id": "", "name": "👍", "code": "thumbsup",
                                                             "isAnimated": False, "imageUrl": "x"},
                                                   "count": 1, "users": [BEN]}],
             "mentions": [ANN] if "@" in content else [], "inlineEmojis": []}
    if not old:
        entry["stickers"] = stickers or []
        entry["components"] = []
    if reference is not None:
        entry["reference"] = reference
    if forwarded is not None:
        entry["forwardedMessage"] = forwarded
    return entry


def reference(message_id: str | None, channel: str = CHANNEL, kind: str | None = "Default") -> dict:
    ref = {"messageId": message_id, "channelId": channel, "guildId": GUILD}
    if kind is not None:
        ref = {"type": kind, **ref}
    return ref


def at(minute: int) -> str:
    return f"2024-03-01T10:{minute:02d}:00.000+01:00"


def messages() -> list[dict]:
    """Every case the reader must tell apart, in one channel."""
    return [
        message("1100000000000000001", ANN, "anyone up for pizza tonight?", at=at(0)),
        message("1100000000000000002", BEN, "me! where?", kind="Reply", at=at(1),
                reference=reference("1100000000000000001")),
        message("1100000000000000003", BEN, "and when?", at=at(2)),  # his burst
        message("1100000000000000004", ANN, "at mine, 8", kind="Reply", at=at(3), edited=at(4),
                reference=reference("1100000000000000002")),
        message("1100000000000000005", CARL, "replying to something long gone", kind="Reply", at=at(5),
                reference=reference("1000000000000000099")),
        message("1100000000000000006", CARL, "", at=at(6), reference=reference("5", OTHER_CHANNEL, "Forward"),
                forwarded={"timestamp": at(1), "timestampEdited": None, "content": "a forwarded text",
                           "attachments": [], "embeds": [], "stickers": []}),
        message("1100000000000000007", HELPER, "Reminder: pizza at 8", kind="Reply", at=at(7),
                reference=reference("1100000000000000004")),
        message("1100000000000000008", ANN, "", at=at(8),
                attachments=[{"id": "1", "url": "a.png", "fileName": "pizza.PNG", "fileSizeBytes": 10}]),
        message("1100000000000000009", BEN, "", at=at(9),
                stickers=[{"id": "2", "name": "party", "format": "Png", "sourceUrl": "s.png"}]),
        message("1100000000000000010", ANN, "look https://example.com", at=at(10),
                embeds=[{"title": "Example", "url": "https://example.com", "description": ""}]),
        message("1100000000000000011", ANN, "Ann pinned a message.", kind="ChannelPinnedMessage", at=at(11),
                reference=reference("1100000000000000004")),
        message("1100000000000000012", CARL, "Carl joined the server.", kind="GuildMemberJoin", at=at(12)),
        message("1100000000000000013", BEN, "Pizza chat", kind="ThreadCreated", at=at(13)),
        message("1100000000000000014", BEN, "Ben started a call.", kind="Call", at=at(14)),
        message("1100000000000000015", ANN, "Ann added Carl to the group.", kind="RecipientAdd", at=at(15)),
        message("1100000000000000016", ANN, "Ann changed the channel name.", kind="ChannelNameChange", at=at(16)),
        message("1100000000000000017", ANN, "Ann changed the channel icon.", kind="ChannelIconChange", at=at(17)),
        message("1100000000000000018", CARL, "boosted", kind="24", at=at(18)),  # a type this reader does not know
        message("1100000000000000019", user("1003", "carl", "Carl the Great", roles=False), "old export, @Ann",
                kind="Reply", at=at(19), reference={"messageId": "1100000000000000008", "channelId": CHANNEL,
                                                     "guildId": GUILD}, old=True),
        message("1100000000000000020", BEN, "a reply into another channel", kind="Reply", at=at(20),
                reference=reference("77", OTHER_CHANNEL)),
    ]


def export(msgs: list[dict] | None = None, channel_type: str = "GuildTextChat") -> dict:
    msgs = messages() if msgs is None else msgs
    return {
        "guild": {"id": GUILD, "name": "Pizza Club", "iconUrl": "https://cdn.discordapp.com/icons/g.png"},
        "channel": {"id": CHANNEL, "type": channel_type, "categoryId": "8", "category": "Text Channels",
                    "name": "general", "topic": None},
        "dateRange": {"after": None, "before": None},
        "exportedAt": "2024-03-02T00:00:00.000+00:00",
        "messages": msgs,
        "messageCount": len(msgs),
    }


def write(path: Path, data: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(export() if data is None else data, ensure_ascii=False, indent=2), encoding="utf-8")
    return path
