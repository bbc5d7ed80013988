"""Sample Telegram Desktop exports for the demo: invented people and chats, no real data.

Each chat is stitched from short scripted exchanges. A line of a script is ``(speaker, text, kind)``
(text: one phrasing or a list of them, with {slots} filled once per exchange):
speaker is a role of the exchange, kind is "reply" (replies to the previous line of the script),
"burst" (the same speaker goes on within seconds) or "" (a plain message).

The chats are groups, not duets: an exchange is played by the members whose usual topic it is or, as often, by
others; people address each other by name (``{to}``: whom the line answers); and a third of the exchanges
overlap with another one, so a message's earlier context holds two conversations at once, told apart by who
speaks.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

SFW_MEMBERS = ["Marta Quill", "Tobias Fern", "Ines Arcos", "Leo Brandt", "Priya Nair"]
NSFW_MEMBERS = ["Dex Moreau", "Sal Okafor", "Rudy Vance", "Kim Lutz"]

# A script line's text may be a list of phrasings (one is picked) and may name slots ({day}, {food}, …) that
# are filled once per exchange from the chat's SLOTS, so that the same kind of exchange comes back with other
# words and a held-out query is a new combination, not a copy of a trained one.
SFW_SLOTS = {
    "day": ["friday", "saturday", "sunday", "tuesday", "thursday", "tomorrow", "tonight"],
    "game": ["board games", "trivia night", "a movie night", "bowling", "mini golf", "a picnic", "karaoke"],
    "snack": ["snacks", "cookies", "chips", "lemonade", "a cake", "popcorn", "dumplings"],
    "time": ["7", "8", "half past 6", "noon", "9ish", "6 sharp"],
    "shop": ["bakery", "coffee place", "bookshop", "noodle bar", "flower shop", "cheese shop"],
    "street": ["5th", "Main street", "the corner by the park", "Elm road", "the market square"],
    "treat": ["cinnamon rolls", "croissants", "scones", "lemon tarts", "almond buns"],
    "thing": ["sourdough starter", "basil plant", "old laptop", "bike tyre", "umbrella", "phone charger"],
    "book": ["a sci-fi book about a generation ship", "a mystery set on a train", "a memoir about sailing",
             "a fantasy series with dragons", "a cookbook from Lisbon"],
    "transport": ["train", "bus", "tram", "ferry"],
    "minutes": ["ten", "twenty", "thirty", "forty"],
    "dish": ["ramen", "tacos", "dumplings", "curry", "pho", "pizza"],
    "place": ["the one by the station", "the place near the library", "the food truck", "the old diner"],
    "pet": ["fern", "cactus", "orchid", "goldfish", "cat"],
    "event": ["concert", "theatre", "football", "comedy show", "festival"],
}

SFW_SCRIPTS = [
    [(0, ["anyone up for {game} on {day}?", "who's in for {game} {day}?", "{game} on {day}, anyone?"], ""),
     (1, ["count me in, I'll bring {snack}", "I'm in {to}! I'll bring {snack}", "yes please, I've got {snack}"], "reply"),
     (1, ["and good vibes", "maybe some music too", "can't wait"], "burst"),
     (2, ["{day} works, what time?", "I can do {day}, when?", "sounds fun, what time?"], "reply"),
     (0, ["around {time}", "let's say {time}, {to}", "{time} at mine"], "reply")],
    [(3, ["the {shop} on {street} finally reopened", "the {shop} on {street} is open again"], ""),
     (4, ["no way, are the {treat} back?", "finally! do they still do {treat}?"], "reply"),
     (3, ["yes and they're still warm at 8am", "yes, and they're even better than before"], "reply"),
     (3, ["I already had two", "I might go back tomorrow", "bring me one next time"], "burst")],
    [(2, ["my {thing} died again", "my {thing} gave up on me", "RIP my {thing}"], ""),
     (0, ["did you forget about it?", "oh no, what happened?", "again?? what did you do"], "reply"),
     (2, ["I did everything right! it just gave up on life", "no idea, it was fine yesterday"], "reply"),
     (1, ["I can lend you mine", "I have a spare one you can have", "want me to bring you one?"], "reply"),
     (2, ["you're a hero, {to}", "you're the best", "thank you {to}, lifesaver"], "reply")],
    [(4, ["what's everyone reading lately?", "any good book recommendations?", "I need a new book"], ""),
     (3, ["{book}", "just finished {book}", "I'm halfway through {book}"], "reply"),
     (3, ["slow start but great ending", "couldn't put it down", "totally worth it"], "burst"),
     (0, ["send me the title", "ooh lend it to me after", "adding it to my list"], "reply")],
    [(1, ["the {transport} is delayed again", "stuck on the {transport}, it's not moving", "{transport} cancelled, ugh"], ""),
     (2, ["how long?", "oh no, how late will you be?", "again? how bad is it"], "reply"),
     (1, ["{minutes} minutes, maybe more", "at least {minutes} minutes", "they say {minutes} minutes"], "reply"),
     (4, ["start without me then", "we'll save you a seat", "no stress, we'll wait"], "reply")],
    [(0, ["happy birthday {p3}!! 🎂", "it's {p3}'s birthday today 🎉", "happy birthday {p3}! 🥳"], ""),
     (3, ["thank you all ❤️", "aww thanks everyone", "you're all sweet, thank you"], "reply"),
     (3, ["cake at my place at {time}", "drinks at mine at {time}", "come by at {time} for cake"], "burst"),
     (2, ["I'll be there", "wouldn't miss it, {to}", "see you then!"], "reply")],
    [(2, ["does anyone know a good bike mechanic?", "who fixes bikes around here?", "my bike needs a repair, any tips?"], ""),
     (4, ["the shop next to the library is honest", "try the guy at the market, he's cheap", "I fix mine at the co-op"], "reply"),
     (2, ["thanks, my brakes are squeaking like crazy", "great, the chain keeps falling off", "perfect, thanks {to}!"], "reply")],
    [(3, ["rain all weekend apparently", "it's going to pour all {day}", "forecast says storms {day}"], ""),
     (1, ["perfect excuse for a movie marathon", "time for soup and blankets", "great, indoor plans then"], "reply"),
     (0, ["I vote for the old detective films", "I'll bring {snack}", "my place has the biggest couch"], "reply"),
     (1, ["deal, I'll make popcorn", "deal!", "perfect, see you there"], "reply")],
    [(4, ["tried the new {dish} place, it's amazing", "the new {dish} spot is so good", "best {dish} I've had in years"], ""),
     (0, ["better than {place}?", "where is it?", "ooh what did you get?"], "reply"),
     (4, ["way better, the food is incredible", "trust me, it's worth the walk", "the spicy one, so good"], "reply"),
     (4, ["go before it gets famous", "we should all go {day}", "I'm going back {day}"], "burst")],
    [(1, ["can someone water my plants while I'm away?", "anyone free to feed my {pet} next week?"], ""),
     (2, ["sure, how often?", "I can do it, what do I need to know?", "happy to, when do you leave?"], "reply"),
     (1, ["every two days, the {pet} is dramatic", "just once a day, it's easy", "from {day}, keys are under the mat"], "reply"),
     (2, ["got it, I'll talk to it too", "no problem {to}, consider it done", "easy, enjoy your trip!"], "reply")],
    [(0, ["who took the last cookie from the jar", "who ate my {treat}??", "someone finished the {snack} again"], ""),
     (3, ["I plead the fifth", "wasn't me 👀", "no comment"], "reply"),
     (0, ["I knew it, {to}", "unbelievable", "I'm telling everyone"], "reply"),
     (0, ["you owe me a batch now", "you're buying the next round", "replace them by {day}!"], "burst")],
    [(2, ["the {event} tickets go on sale at noon", "{event} tickets drop {day}!", "who wants {event} tickets?"], ""),
     (4, ["setting an alarm right now", "I'll try to get some", "ooh I'm in"], "reply"),
     (1, ["get me two if you can", "one for me please!", "I'll pay you back {day}"], "reply"),
     (4, ["will try, the site always crashes", "no promises but I'll try", "sure thing"], "reply")],
    [(3, ["coffee {day} before work?", "anyone want coffee {day} morning?", "breakfast {day}?"], ""),
     (0, ["yes! usual spot?", "only if it's the {shop}", "I need it, yes"], "reply"),
     (3, ["usual spot at {time}", "the {shop} at {time}", "{time}, don't be late"], "reply"),
     (0, ["see you there {to} ☕", "I'll be the sleepy one", "deal"], "reply")],
    [(4, ["I finally finished the puzzle", "I painted the kitchen this weekend", "I fixed the {thing} myself!"], ""),
     (1, ["pics or it didn't happen", "proud of you, {to}!", "show us!"], "reply"),
     (4, ["sending them later", "took me all weekend", "it's not perfect but I love it"], "reply")],
]

NSFW_SLOTS = {
    "team": ["the referee", "our keeper", "the linesman", "the manager", "our striker"],
    "drink": ["beer", "cider", "whisky", "tequila", "wine", "lager"],
    "day": ["friday", "saturday", "tonight", "sunday", "thursday", "tomorrow"],
    "food": ["curry", "kebab", "chilli", "wings", "burger", "pizza"],
    "boss": ["my boss", "my landlord", "my manager", "the new supervisor"],
    "crime": ["scheduled a meeting at 5pm on a friday", "stole my parking spot", "ate my lunch from the fridge",
              "replied all to the whole company", "raised the rent again"],
    "game": ["poker", "darts", "pool", "cards"],
    "noise": ["dog", "car alarm", "parrot", "baby", "drummer"],
    "body": ["toe", "elbow", "knee", "head"],
    "place": ["the pub", "mine", "Sal's", "the usual dive"],
    "money": ["a tenner", "twenty quid", "a fiver", "fifty quid"],
}

NSFW_SCRIPTS = [
    [(0, ["mate {team} was blind as hell last night", "{team} was a bloody disgrace last night"], ""),
     (1, ["absolute joke, he should be sacked", "worst performance I've ever seen", "useless git"], "reply"),
     (1, ["I nearly threw my {drink} at the telly", "I was screaming at the screen", "ruined my night"], "burst"),
     (2, ["you'd have cried more about the {drink}", "calm down, it's only football", "you say that every week"], "reply")],
    [(3, ["who drank all my damn {drink}", "where the hell is my {drink}", "which one of you nicked my {drink}"], ""),
     (0, ["not me {to}, I only drink the good stuff", "don't look at me", "wasn't me, check Rudy"], "reply"),
     (3, ["you bloody liar {to}, your name is on the cans", "I saw you with it, you muppet", "you reek of it"], "reply"),
     (0, ["fair cop", "worth it", "I'll buy you another, relax"], "reply")],
    [(1, ["hungover as hell today", "my head is killing me", "never drinking {drink} again"], ""),
     (2, ["serves you right after those {drink} shots", "you were a disaster last night", "drink water, you idiot"], "reply"),
     (1, ["never again. until {day}", "I know, I know", "don't remind me"], "reply"),
     (1, ["{food} fixes everything though", "need a greasy {food} right now", "someone bring me {food}"], "burst")],
    [(2, ["{boss} is a complete arse", "I swear {boss} is out to get me", "{boss} is a total prick"], ""),
     (3, ["what did the prick do now?", "what now, {to}?", "go on, what happened"], "reply"),
     (2, ["{crime}", "he {crime}", "only {crime}"], "reply"),
     (0, ["that's a crime against humanity", "report the bastard", "pints on me, you need them"], "reply")],
    [(0, ["{game} at {place} {day}, bring cash and bad decisions", "{game} night {day}, who's in?"], ""),
     (1, ["I'm taking all your money, suckers", "I'm in, bring {money}", "count me in, losers"], "reply"),
     (3, ["you said that last time and went home skint", "you owe me {money} from last time", "bring it on"], "reply"),
     (1, ["shut up {to}", "not this time", "we'll see, mate"], "reply")],
    [(3, ["my neighbour's {noise} kept me up all bloody night", "that {noise} next door is driving me mad"], ""),
     (2, ["buy earplugs or a shotgun", "go round and have a word", "move house, mate"], "reply"),
     (3, ["earplugs it is, I'm not going to jail for this", "I'll have a word, politely", "tempting"], "reply")],
    [(1, ["just stubbed my {body} so hard I invented new swear words", "smacked my {body} on the door, bloody hell"], ""),
     (0, ["share them, I need fresh material", "walk it off, you wuss", "did you cry?"], "reply"),
     (1, ["not in front of the children", "you don't want to know", "a little bit"], "reply"),
     (2, ["what children, we're all degenerates", "we've heard worse from you", "soft as butter"], "reply")],
    [(2, ["gym was hell, my legs are jelly", "leg day nearly killed me", "personal trainer is a sadist"], ""),
     (3, ["skipping leg day is the only way", "that's what you get for trying", "you went to the gym?"], "reply"),
     (2, ["that's why you walk like a chicken", "says the one who gets winded on stairs", "shut it"], "reply"),
     (3, ["rude but accurate", "fair", "low blow, {to}"], "reply")],
    [(0, ["that {food} last night destroyed me", "never ordering the extra hot {food} again"], ""),
     (1, ["told you the extra hot was a mistake", "you never learn", "I warned you, mate"], "reply"),
     (0, ["my arse is on fire", "I've been in the loo all morning", "I regret everything"], "reply"),
     (0, ["worth it though", "doing it again {day}", "no regrets"], "burst")],
    [(3, ["karaoke {day}, no excuses", "karaoke at {place} {day}, be there"], ""),
     (2, ["I sing like a drunk goat", "only if you buy the first round", "hell no"], "reply"),
     (3, ["that's the whole point you muppet", "that's why it's fun", "you're coming, deal with it"], "reply"),
     (1, ["I'm doing the rap song again", "I'm bringing the tambourine", "I'll need three pints first"], "reply")],
    [(1, ["who's buying the next round?", "{drink} o'clock, who's coming to {place}?"], ""),
     (0, ["you are, you tight git", "not me {to}, I'm skint", "I got the last one, your turn"], "reply"),
     (1, ["fine, but only this once", "you lot are a bunch of leeches", "alright alright"], "reply")],
    [(2, ["lost {money} on the horses again", "bet {money} on the match and lost"], ""),
     (3, ["you never learn, do you {to}", "what were you thinking", "you absolute donkey"], "reply"),
     (2, ["it was a sure thing!", "next time I'll win it back", "don't tell my missus"], "reply")],
]

BOT_NAME, BOT_ID = "GroupHelpBot", "user7000001"
NOT_INCLUDED = "(File not included. Change data exporting settings to download.)"


def _text_fields(text: str) -> dict:
    return {"text": text, "text_entities": [{"type": "plain", "text": text}] if text else []}


def _line(text: str | list[str], slots: dict[str, str], rng: random.Random) -> str:
    return (rng.choice(text) if isinstance(text, list) else text).format(**slots)


def _first_name(member: str) -> str:
    return member.split()[0]


#: Share of exchanges played by others than their usual members, and share that overlap with another exchange.
RECAST, OVERLAP = 0.5, 0.35


def _cast(script: list[tuple[int, object, str]], members: list[str], rng: random.Random) -> dict[int, int]:
    """Which member plays each role of an exchange: its usual members, or (RECAST of the time) others."""
    roles = sorted({speaker for speaker, _, _ in script})
    if rng.random() >= RECAST:
        return {role: role % len(members) for role in roles}
    return dict(zip(roles, rng.sample(range(len(members)), len(roles))))


def _chunks(script: list[tuple[int, object, str]], cast: dict[int, int], members: list[str],
            slot_values: dict[str, list[str]], rng: random.Random) -> list[list[dict]]:
    """An exchange as chunks that stay together (a line and its burst): each line's member, text and kind."""
    slots = {slot: rng.choice(values) for slot, values in slot_values.items()}
    chunks: list[list[dict]] = []
    previous = None
    for speaker, phrasings, kind in script:
        who = cast[speaker]
        to = _first_name(members[previous]) if previous is not None and previous != who else "all"
        names = {f"p{role}": _first_name(members[member]) for role, member in cast.items()}
        line = {"who": who, "text": _line(phrasings, {**slots, **names, "to": to}, rng), "kind": kind}
        if kind == "burst" and chunks:
            chunks[-1].append(line)
        else:
            chunks.append([line])
            previous = who
    return chunks


def _interleaved(first: list[list[dict]], second: list[list[dict]], rng: random.Random) -> list[tuple[int, dict]]:
    """Two exchanges' chunks merged in a random order that keeps each one's own order: (exchange, line)."""
    order = [0] * len(first) + [1] * len(second)
    rng.shuffle(order)
    queues = [list(first), list(second)]
    return [(which, line) for which in order for line in queues[which].pop(0)]


def build_chat(name: str, chat_id: int, members: list[str], scripts: list[list[tuple[int, object, str]]],
               slot_values: dict[str, list[str]], target_messages: int, seed: int) -> dict:
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
        exchanges = [_chunks(script, _cast(script, members, rng), members, slot_values, rng)
                     for script in rng.sample(scripts, 2 if rng.random() < OVERLAP else 1)]
        lines = [(0, line) for chunk in exchanges[0] for line in chunk] if len(exchanges) == 1 \
            else _interleaved(*exchanges, rng)
        previous_ids: dict[int, int | None] = {0: None, 1: None}
        for which, line in lines:
            t += timedelta(seconds=rng.randint(4, 40) if line["kind"] == "burst" else rng.randint(30, 240))
            who, who_id = people[line["who"]]
            entry = {"from": who, "from_id": who_id, **_text_fields(line["text"])}
            if line["kind"] == "reply" and previous_ids[which] is not None:
                entry["reply_to_message_id"] = previous_ids[which]
            if line["kind"] != "burst" or previous_ids[which] is None:
                previous_ids[which] = add(entry, t)
            else:
                add(entry, t)
        _add_noise(add, messages, people, t + timedelta(seconds=rng.randint(30, 300)), rng)
    return {"name": name, "type": "private_supergroup", "id": chat_id, "messages": messages}


def _add_noise(add, messages: list[dict], people: list[tuple[str, str]], t: datetime,  # noqa: ANN001
               rng: random.Random) -> None:
    """Now and then what real groups also have: forwards, the group's bot, photos, stickers, pins, GIFs."""
    roll = rng.random()
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


def write_sample_exports(data_dir: Path, messages_per_chat: int = 300) -> dict[str, Path]:
    """Write ``data_dir/SFW/result.json`` and ``data_dir/NSFW/result.json``; return their paths."""
    chats = {
        "SFW": build_chat("Cookie Club", 1_700_000_101, SFW_MEMBERS, SFW_SCRIPTS, SFW_SLOTS, messages_per_chat,
                          seed=1),
        "NSFW": build_chat("Pub Crew", 1_700_000_202, NSFW_MEMBERS, NSFW_SCRIPTS, NSFW_SLOTS, messages_per_chat,
                          seed=2),
    }
    paths = {}
    for label, chat in chats.items():
        path = data_dir / label / "result.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(chat, ensure_ascii=False, indent=1), encoding="utf-8")
        paths[label] = path
    return paths
