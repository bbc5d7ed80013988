"""Reply measures on hand-made replies, with exact expected values."""

from __future__ import annotations

import pytest

from cookiebaker.quality import (
    Reply,
    distinct_n,
    has_template_leak,
    is_echo,
    is_empty,
    is_loop,
    mean_words,
    reply_statistics,
    similarity,
    text_statistics,
    words,
)

QUERY = "is the lake warm enough to swim yet?"


def test_words_fold_case_punctuation_and_scripts() -> None:
    assert words("Is the LAKE warm?!  Yes…") == ["is", "the", "lake", "warm", "yes"]
    assert words("سلام دوست من") == ["سلام", "دوست", "من"]
    assert words("") == []


@pytest.mark.parametrize(("reply", "echo"), [
    ("is the lake warm enough to swim yet?", True),            # the query itself
    ("Is the lake warm enough to swim yet", True),             # case and punctuation do not matter
    ("the lake is warm enough to swim yet?", True),            # a near copy (similarity 0.914)
    ("is the lake warm enough to swim yet? no idea, mate", True),  # the query, then more
    ("lake warm", True),                                       # a two-word run of the query
    ("warm", False),                                           # one shared word is not an echo
    ("no way, it's freezing", False),                          # a real answer
    ("", False),                                               # empty is counted as empty, not as an echo
])
def test_echo(reply: str, echo: bool) -> None:
    assert is_echo(QUERY, reply) is echo


def test_similarity_values() -> None:
    assert similarity(QUERY, QUERY) == 1.0
    assert similarity(QUERY, "the lake is warm enough to swim yet?") == pytest.approx(64 / 70)
    assert similarity("", "") == 1.0
    assert similarity("abc", "") == 0.0


@pytest.mark.parametrize(("reply", "loop"), [
    ("very very very very good", True),                        # a word four times in a row
    ("very very very good", False),                            # three is emphasis
    ("abc abc abc abc ", True),                                # a unit repeated four times
    ("I like it and I like it and I like it and I like it", True),
    ("hahahahahahahahaha", False),                             # laughter: a unit of two characters
    ("count me in, I'll bring snacks and the new expansion", False),
    ("one two three four five six seven eight nine ten eleven twelve", False),
])
def test_loop(reply: str, loop: bool) -> None:
    assert is_loop(reply) is loop


@pytest.mark.parametrize(("reply", "leak"), [
    ("sure<|im_end|>", True), ("<start_of_turn>model\nhi", True), ("ok <end_of_turn>", True), ("hi<eos>", True),
    ("a < b > c", False), ("see you at <7pm>", False), ("plain text", False),
])
def test_template_leak(reply: str, leak: bool) -> None:
    assert has_template_leak(reply) is leak


def test_distinct_and_length() -> None:
    assert distinct_n(["a b c", "a b d"], 2) == 0.75
    assert distinct_n(["a", "b"], 2) is None
    assert mean_words(["a b", "c d e f"]) == 3.0
    assert mean_words([]) is None
    assert is_empty("  \n") and not is_empty(" x ")


def test_reply_statistics_of_five_hand_made_replies() -> None:
    queries = [QUERY, QUERY, "how was the gym?", "coffee tomorrow?", "who took the last cookie"]
    replies = [
        Reply("is the lake warm enough to swim yet?", "stop"),       # echo
        Reply("the lake is warm enough to swim yet", "stop"),        # near echo
        Reply("very very very very very very", "length"),           # loop, cut at the token limit
        Reply("sure thing<|im_end|>", "stop"),                       # template leak
        Reply("I plead the fifth", "stop"),                          # clean
    ]
    stats = reply_statistics(queries, replies)
    assert stats == {
        "generated": 5,
        "echo_rate": 0.4,
        "loop_rate": 0.2,
        "empty_rate": 0.0,
        "stop_rate": 0.8,
        "template_leak_rate": 0.2,
        # word bigrams: 7 + 7 + 5 + 2 + 3 = 24 ("<|im_end|>" reads as the word im_end); distinct: the echo's 7,
        # the near echo's "lake is" and "is warm", one "very very", 2 and 3 → 15
        "distinct_2": 0.625,
        "mean_reply_words": 5.8,
    }


def test_real_response_statistics() -> None:
    stats = text_statistics(["hi there", "coffee?"], ["hi there", "yes please"])
    assert stats == {"samples": 2, "echo_rate": 0.5, "loop_rate": 0.0, "distinct_2": 1.0, "mean_reply_words": 2.0}
