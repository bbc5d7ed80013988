"""Write a realistic WhatsApp "Export chat" text: Android or iOS layout, a phone locale's dates, multi-line
messages (some lines of which begin with a date that is no header), media placeholders, system lines, deleted and
edited messages, senders not in the contacts (``~ Name``) and shown as phone numbers.

Usage: python bench/synth_whatsapp.py --messages 1000000 --out chat.txt [--style android|ios] [--locale en_US|
en_GB|de|fi] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
from datetime import datetime, timedelta

NAMES = ["Anna Berg", "Ben Okoro", "Chiara Russo", "Dev Patel", "~ Emil Strand", "+44 7700 900123", "Farah 🌸",
         "Gus", "Hana Sato", "Ivo"]
WORDS = ("ok sure lol yes no maybe tonight tomorrow pizza train late coffee see you soon haha what when where who "
         "why great thanks nice cool bring snacks meet at mine park rain sunny weekend plans sounds good").split()
MEDIA = {"android": ["<Media omitted>", "IMG-20230101-WA0001.jpg (file attached)"],
         "ios": ["\u200eimage omitted", "\u200evideo omitted", "\u200esticker omitted",
                 "\u200e<attached: 00000012-PHOTO-2023-05-04-16-13-23.jpg>"]}
SYSTEM = ["Ben Okoro added Ivo", "Gus left", 'Anna Berg changed the subject to "Weekend crew"',
          "Hana Sato joined using this group's invite link"]


def _date(when: datetime, locale: str) -> str:
    if locale == "en_US":
        return f"{when.month}/{when.day}/{when:%y}"
    if locale == "en_GB":
        return f"{when:%d/%m/%Y}"
    if locale == "de":
        return f"{when:%d.%m.%y}"
    return f"{when.day}.{when.month}.{when.year}"  # fi


def _time(when: datetime, locale: str, seconds: bool) -> str:
    if locale == "en_US":
        hour = when.hour % 12 or 12
        return f"{hour}:{when:%M}{':' + format(when, '%S') if seconds else ''}\u202f{'AM' if when.hour < 12 else 'PM'}"
    if locale == "fi":
        return f"klo {when:%H.%M}"
    return f"{when:%H:%M}{':' + format(when, '%S') if seconds else ''}"


def _header(when: datetime, style: str, locale: str) -> str:
    if style == "ios":
        return f"[{_date(when, locale)}, {_time(when, locale, True)}] "
    return f"{_date(when, locale)} {_time(when, locale, False)} - " if locale == "fi" else \
        f"{_date(when, locale)}, {_time(when, locale, False)} - "


def _text(rng: random.Random) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
    if rng.random() < 0.05:  # a second line, sometimes starting like a date
        text += "\n" + (f"{rng.randint(1, 28)}/{rng.randint(1, 12)}/2023 works for me" if rng.random() < 0.3
                        else " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))))
    if rng.random() < 0.01:
        text += " <This message was edited>"
    return text


def write(out: str, messages: int, style: str = "android", locale: str = "en_GB", seed: int = 0) -> None:
    rng = random.Random(seed)
    when = datetime(2021, 1, 3, 9, 0)
    with open(out, "w", encoding="utf-8") as handle:
        group = "Weekend crew"
        e2e = ("Messages and calls are end-to-end encrypted. No one outside of this chat, not even WhatsApp, can "
               "read or listen to them.")
        handle.write(f"{_header(when, style, locale)}{group}: \u200e{e2e}\n" if style == "ios"
                     else f"{_header(when, style, locale)}{e2e}\n")
        for _ in range(messages - 1):
            when += timedelta(seconds=rng.choice((5, 20, 40, 90, 300, 1200, 7200, 40000)))
            roll = rng.random()
            head = _header(when, style, locale)
            if roll < 0.01:
                system = rng.choice(SYSTEM)
                handle.write(f"{head}{group}: \u200e{system}\n" if style == "ios" else f"{head}{system}\n")
                continue
            name = rng.choice(NAMES)
            if roll < 0.06:
                body = rng.choice(MEDIA[style])
            elif roll < 0.07:
                body = "\u200eThis message was deleted" if style == "ios" else "This message was deleted"
            else:
                body = _text(rng)
            handle.write(f"{'' if style == 'android' or roll >= 0.06 else chr(0x200e)}{head}{name}: {body}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--out", required=True)
    parser.add_argument("--style", choices=("android", "ios"), default="android")
    parser.add_argument("--locale", choices=("en_US", "en_GB", "de", "fi"), default="en_GB")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write(args.out, args.messages, args.style, args.locale, args.seed)


if __name__ == "__main__":
    main()
