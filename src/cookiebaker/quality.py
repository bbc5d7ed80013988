"""What a user judges: measures of the replies themselves (echoes, loops, empty replies, template leaks,
diversity, length). Shared by ``pairs`` (a response that echoes its query is a counted drop) and ``eval``.

Every measure works on plain text and is exact: the tests give hand-made replies and expected values.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

#: A reply whose normalised text is at least this similar to the query's is an echo.
ECHO_SIMILARITY = 0.8
#: One side contained in the other is an echo when the contained side has at least this many words.
ECHO_MIN_CONTAINED_WORDS = 2
#: Chat-template markup that must never reach a reply (Gemma, ChatML/SmolLM2, Llama 3, generic).
TEMPLATE_MARKERS = re.compile(r"<start_of_turn>|<end_of_turn>|<eos>|<bos>|<\|[a-z_]+\|>|</s>|\[/?INST\]")

_WORD = re.compile(r"\w+", re.UNICODE)
# A unit of 4-40 characters repeated at least 4 times in a row ("very very very very …", "abcabcabcabc").
_REPEATED_UNIT = re.compile(r"(.{4,40}?)\1{3,}", re.S)


def words(text: str) -> list[str]:
    """Case-folded words (letters, digits, underscore runs in any script); punctuation and spacing vanish."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def similarity(a: str, b: str) -> float:
    """Similarity of two texts' normalised word sequences (difflib ratio on the joined words), in [0, 1]."""
    left, right = " ".join(words(a)), " ".join(words(b))
    if not left and not right:
        return 1.0
    return SequenceMatcher(None, left, right, autojunk=False).ratio()


def _contains_run(longer: list[str], shorter: list[str]) -> bool:
    width = len(shorter)
    return any(longer[i:i + width] == shorter for i in range(len(longer) - width + 1))


def is_echo(query: str, reply: str, threshold: float = ECHO_SIMILARITY) -> bool:
    """The reply is the query or nearly so: normalised similarity ≥ ``threshold``, or one contains the other
    as a run of whole words (the contained side at least two words). An empty side is never an echo."""
    q, r = words(query), words(reply)
    if not q or not r:
        return False
    if similarity(query, reply) >= threshold:
        return True
    shorter, longer = (q, r) if len(q) <= len(r) else (r, q)
    return len(shorter) >= ECHO_MIN_CONTAINED_WORDS and _contains_run(longer, shorter)


def is_loop(reply: str) -> bool:
    """Degenerate repetition: one word four or more times in a row, a 4-40 character unit (of at least three
    different characters) repeated four or more times in a row, or, in replies of 12+ words, fewer than half
    of the word 3-grams distinct."""
    tokens = words(reply)
    run = 1
    for previous, current in zip(tokens, tokens[1:]):
        run = run + 1 if current == previous else 1
        if run >= 4:
            return True
    for match in _REPEATED_UNIT.finditer(reply):
        if len(set(match.group(1))) >= 3:
            return True
    if len(tokens) >= 12:
        grams = list(zip(tokens, tokens[1:], tokens[2:]))
        if len(set(grams)) / len(grams) < 0.5:
            return True
    return False


def is_empty(reply: str) -> bool:
    return not reply.strip()


def has_template_leak(reply: str) -> bool:
    return TEMPLATE_MARKERS.search(reply) is not None


def distinct_n(texts: Sequence[str], n: int = 2) -> float | None:
    """Distinct word n-grams over all texts divided by all word n-grams (None when there is none)."""
    grams = [tuple(tokens[i:i + n]) for tokens in map(words, texts) for i in range(len(tokens) - n + 1)]
    return round(len(set(grams)) / len(grams), 4) if grams else None


def mean_words(texts: Sequence[str]) -> float | None:
    return round(sum(len(words(t)) for t in texts) / len(texts), 3) if texts else None


def _rate(flags: Sequence[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


@dataclass(frozen=True)
class Reply:
    """A generated reply and why generation ended: ``stop`` (the end-of-turn token or a stop string) or
    ``length`` (the token limit)."""

    text: str
    finish_reason: str | None


def reply_statistics(queries: Sequence[str], replies: Sequence[Reply],
                     echo_threshold: float = ECHO_SIMILARITY) -> dict[str, float | int | None]:
    """The rates and statistics of generated replies to ``queries`` (same order)."""
    texts = [reply.text for reply in replies]
    return {
        "generated": len(replies),
        "echo_rate": _rate([is_echo(q, r, echo_threshold) for q, r in zip(queries, texts)]),
        "loop_rate": _rate([is_loop(t) for t in texts]),
        "empty_rate": _rate([is_empty(t) for t in texts]),
        "stop_rate": _rate([reply.finish_reason == "stop" for reply in replies]),
        "template_leak_rate": _rate([has_template_leak(t) for t in texts]),
        "distinct_2": distinct_n(texts, 2),
        "mean_reply_words": mean_words(texts),
    }


def text_statistics(queries: Sequence[str], responses: Sequence[str],
                    echo_threshold: float = ECHO_SIMILARITY) -> dict[str, float | int | None]:
    """The same length, diversity, echo and loop measures for real responses (the yardstick)."""
    return {
        "samples": len(responses),
        "echo_rate": _rate([is_echo(q, r, echo_threshold) for q, r in zip(queries, responses)]),
        "loop_rate": _rate([is_loop(t) for t in responses]),
        "distinct_2": distinct_n(responses, 2),
        "mean_reply_words": mean_words(responses),
    }
