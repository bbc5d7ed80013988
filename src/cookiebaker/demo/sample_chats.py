"""Sample Telegram Desktop exports for the demo: invented people and chats, no real data.

Each chat is stitched from short scripted exchanges. A line of a script is ``(speaker, text, kind)``:
speaker is an index into the chat's members, kind is "reply" (replies to the previous line of the script),
"burst" (the same speaker goes on within seconds) or "" (a plain message).
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

SFW_MEMBERS = ["Marta Quill", "Tobias Fern", "Ines Arcos", "Leo Brandt", "Priya Nair"]
NSFW_MEMBERS = ["Dex Moreau", "Sal Okafor", "Rudy Vance", "Kim Lutz"]

SFW_SCRIPTS = [
    [(0, "anyone up for board games on friday?", ""), (1, "count me in, I'll bring snacks", "reply"),
     (1, "and the new expansion", "burst"), (2, "friday works, what time?", "reply"), (0, "around 7", "reply")],
    [(3, "the bakery on 5th finally reopened", ""), (4, "no way, are the cinnamon rolls back?", "reply"),
     (3, "yes and they're still warm at 8am", "reply"), (3, "I already had two", "burst")],
    [(2, "my sourdough starter died again", ""), (0, "did you forget to feed it?", "reply"),
     (2, "I fed it! it just gave up on life", "reply"), (1, "I can give you some of mine", "reply"),
     (2, "you're a hero", "reply")],
    [(4, "what's everyone reading lately?", ""), (3, "a sci-fi book about a generation ship", "reply"),
     (3, "slow start but great ending", "burst"), (0, "send me the title", "reply")],
    [(1, "the train is delayed again", ""), (2, "how long?", "reply"), (1, "twenty minutes, maybe more", "reply"),
     (4, "start without me then", "reply")],
    [(0, "happy birthday Leo!! 🎂", ""), (3, "thank you all ❤️", "reply"), (3, "cake at my place at 6", "burst"),
     (2, "I'll be there", "reply")],
    [(2, "does anyone know a good bike mechanic?", ""), (4, "the shop next to the library is honest", "reply"),
     (2, "thanks, my brakes are squeaking like crazy", "reply")],
    [(3, "rain all weekend apparently", ""), (1, "perfect excuse for a movie marathon", "reply"),
     (0, "I vote for the old detective films", "reply"), (1, "deal, I'll make popcorn", "reply")],
    [(4, "tried the new ramen place, it's amazing", ""), (0, "better than the one by the station?", "reply"),
     (4, "way better, the broth is incredible", "reply"), (4, "go before it gets famous", "burst")],
    [(1, "can someone water my plants while I'm away?", ""), (2, "sure, how often?", "reply"),
     (1, "every two days, the fern is dramatic", "reply"), (2, "got it, I'll talk to it too", "reply")],
    [(0, "who took the last cookie from the jar", ""), (3, "I plead the fifth", "reply"),
     (0, "I knew it", "reply"), (0, "you owe me a batch now", "burst")],
    [(2, "the concert tickets go on sale at noon", ""), (4, "setting an alarm right now", "reply"),
     (1, "get me two if you can", "reply"), (4, "will try, the site always crashes", "reply")],
]

NSFW_SCRIPTS = [
    [(0, "mate that referee was blind as hell last night", ""), (1, "absolute joke, he should be sacked", "reply"),
     (1, "I nearly threw my beer at the telly", "burst"), (2, "you'd have cried more about the beer", "reply")],
    [(3, "who drank all my damn beer", ""), (0, "not me, I only drink the good stuff", "reply"),
     (3, "you bloody liar, your name is on the cans", "reply"), (0, "fair cop", "reply")],
    [(1, "hungover as hell today", ""), (2, "serves you right after those tequila shots", "reply"),
     (1, "never again. until friday", "reply"), (1, "kebab fixes everything though", "burst")],
    [(2, "my boss is a complete arse", ""), (3, "what did the prick do now?", "reply"),
     (2, "scheduled a meeting at 5pm on a friday", "reply"), (0, "that's a crime against humanity", "reply")],
    [(0, "poker at mine, bring cash and bad decisions", ""), (1, "I'm taking all your money, suckers", "reply"),
     (3, "you said that last time and went home skint", "reply"), (1, "shut up", "reply")],
    [(3, "my neighbour's dog barked all bloody night", ""), (2, "buy earplugs or a shotgun", "reply"),
     (3, "earplugs it is, I'm not going to jail for a poodle", "reply")],
    [(1, "just stubbed my toe so hard I invented new swear words", ""), (0, "share them, I need fresh material", "reply"),
     (1, "not in front of the children", "reply"), (2, "what children, we're all degenerates", "reply")],
    [(2, "gym was hell, my legs are jelly", ""), (3, "skipping leg day is the only way", "reply"),
     (2, "that's why you walk like a chicken", "reply"), (3, "rude but accurate", "reply")],
    [(0, "that curry last night destroyed me", ""), (1, "told you the extra hot was a mistake", "reply"),
     (0, "my arse is on fire", "reply"), (0, "worth it though", "burst")],
    [(3, "karaoke saturday, no excuses", ""), (2, "I sing like a drunk goat", "reply"),
     (3, "that's the whole point you muppet", "reply"), (1, "I'm doing the rap song again", "reply")],
]

BOT_NAME, BOT_ID = "GroupHelpBot", "user7000001"
NOT_INCLUDED = "(File not included. Change data exporting settings to download.)"


def _text_fields(text: str) -> dict:
    return {"text": text, "text_entities": [{"type": "plain", "text": text}] if text else []}


def build_chat(name: str, chat_id: int, members: list[str], scripts: list[list[tuple[int, str, str]]],
               target_messages: int, seed: int) -> dict:
    rng = random.Random(seed)
    people = [(member, f"user{5_100_000 + chat_id % 1000 * 10 + i}") for i, member in enumerate(members)]
    t = datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc)
    messages: list[dict] = []
    next_id = 1

    def add(entry: dict, when: datetime) -> int:
        nonlocal next_id
        entry = {"id": next_id, "type": entry.pop("type", "message"), "date": when.strftime("%Y-%m-%dT%H:%M:%S"),
                 "date_unixtime": str(int(when.timestamp())), **entry}
        messages.append(entry)
        next_id += rng.choice((1, 1, 1, 2))  # deleted messages leave holes in the ids
        return entry["id"]

    add({"type": "service", "actor": people[0][0], "actor_id": people[0][1], "action": "create_group",
         "title": name, "members": [p[0] for p in people], **_text_fields("")}, t)
    while len(messages) < target_messages:
        t += timedelta(minutes=rng.randint(20, 600))
        script = rng.choice(scripts)
        previous_id = None
        for speaker, text, kind in script:
            t += timedelta(seconds=rng.randint(4, 40) if kind == "burst" else rng.randint(30, 240))
            who, who_id = people[speaker]
            entry = {"from": who, "from_id": who_id, **_text_fields(text)}
            if kind == "reply" and previous_id is not None:
                entry["reply_to_message_id"] = previous_id
            if kind != "burst" or previous_id is None:
                previous_id = add(entry, t)
            else:
                add(entry, t)
        roll = rng.random()
        t += timedelta(seconds=rng.randint(30, 300))
        who, who_id = rng.choice(people)
        other, other_id = rng.choice([p for p in people if p[1] != who_id])
        if roll < 0.15:
            forward = add({"from": who, "from_id": who_id, "forwarded_from": "Daily Deals Channel",
                           "forwarded_from_id": "channel1900000001",
                           **_text_fields("50% off all kitchen gadgets today")}, t)
            if rng.random() < 0.5:  # a reply to a forward: no training pair (the query is not the group's words)
                t += timedelta(seconds=rng.randint(20, 120))
                add({"from": other, "from_id": other_id, "reply_to_message_id": forward,
                     **_text_fields("ooh I need a new kettle")}, t)
        elif roll < 0.25:
            welcome = add({"from": BOT_NAME, "from_id": BOT_ID,
                           **_text_fields(f"Welcome back, {who}! Be nice in here.")}, t)
            if rng.random() < 0.5:  # people answer bots too; those replies are dropped as query_from_bot
                t += timedelta(seconds=rng.randint(5, 60))
                add({"from": who, "from_id": who_id, "reply_to_message_id": welcome, **_text_fields("thanks bot")}, t)
        elif roll < 0.35:
            add({"from": who, "from_id": who_id, "photo": NOT_INCLUDED, "width": 1280, "height": 960,
                 **_text_fields("")}, t)
        elif roll < 0.42:
            # A sticker in reply to the last message: media only, so no pair (response_empty).
            add({"from": who, "from_id": who_id, "file": NOT_INCLUDED, "media_type": "sticker",
                 "sticker_emoji": "😂", "reply_to_message_id": messages[-1]["id"], **_text_fields("")}, t)
        elif roll < 0.47:
            add({"type": "service", "actor": who, "actor_id": who_id, "action": "pin_message",
                 "message_id": messages[-2]["id"], **_text_fields("")}, t)
        elif roll < 0.52:
            add({"from": who, "from_id": who_id, "via_bot": "@gif", "file": NOT_INCLUDED,
                 "media_type": "animation", **_text_fields("")}, t)
    return {"name": name, "type": "private_supergroup", "id": chat_id, "messages": messages}


def write_sample_exports(data_dir: Path, messages_per_chat: int = 300) -> dict[str, Path]:
    """Write ``data_dir/SFW/result.json`` and ``data_dir/NSFW/result.json``; return their paths."""
    chats = {
        "SFW": build_chat("Cookie Club", 1_700_000_101, SFW_MEMBERS, SFW_SCRIPTS, messages_per_chat, seed=1),
        "NSFW": build_chat("Pub Crew", 1_700_000_202, NSFW_MEMBERS, NSFW_SCRIPTS, messages_per_chat, seed=2),
    }
    paths = {}
    for label, chat in chats.items():
        path = data_dir / label / "result.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(chat, ensure_ascii=False, indent=1), encoding="utf-8")
        paths[label] = path
    return paths
