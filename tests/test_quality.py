"""Reply measures on hand-made replies, with exact expected values."""

from __future__ import annotations

import pytest

from cookiebaker.quality import (
    MEASURES,
    Reply,
    ReplySet,
    candidate_prompts,
    distinct_n,
    has_template_leak,
    is_echo,
    is_empty,
    is_loop,
    length_w1,
    mean_words,
    measure_rows,
    measure_texts,
    one_in_k_hit_rate,
    similarity,
    style_auc,
    top5_share,
    unique_rate,
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


def _set(queries: list[str], replies: list[Reply], real: list[str]) -> ReplySet:
    return ReplySet(queries, [r.text for r in replies], real, [r.finish_reason for r in replies])


def test_text_measures_of_five_hand_made_replies() -> None:
    queries = [QUERY, QUERY, "how was the gym?", "coffee tomorrow?", "who took the last cookie"]
    replies = [
        Reply("is the lake warm enough to swim yet?", "stop"),       # echo
        Reply("the lake is warm enough to swim yet", "stop"),        # near echo
        Reply("very very very very very very", "length"),           # loop, cut at the token limit
        Reply("sure thing<|im_end|>", "stop"),                       # template leak
        Reply("I plead the fifth", "stop"),                          # clean
    ]
    real = ["no way", "too cold", "brutal", "yes!", "not me"]
    stats = measure_texts(_set(queries, replies, real))
    assert 0 <= stats.pop("style_auc") <= 1  # five of each: just enough for five folds
    assert stats == {
        "echo_rate": 0.4,
        "loop_rate": 0.2,
        "empty_rate": 0.0,
        "stop_rate": 0.8,
        "template_leak_rate": 0.2,
        "top5_share": 1.0,   # five replies, all among the five commonest
        "unique_rate": 1.0,
        # word counts 8, 8, 6, 3, 4 against 2, 2, 1, 1, 2: sorted, 3 4 6 8 8 against 1 1 2 2 2, gaps 2 3 4 6 6
        "length_w1": 4.2,
        # word bigrams: 7 + 7 + 5 + 2 + 3 = 24 ("<|im_end|>" reads as the word im_end); distinct: the echo's 7,
        # the near echo's "lake is" and "is warm", one "very very", 2 and 3 → 15
        "distinct_2": 0.625,
        "mean_reply_words": 5.8,
    }


def test_real_replies_get_the_measures_that_apply_to_them() -> None:
    stats = measure_texts(ReplySet(["hi there", "coffee?"], ["hi there", "yes please"], ["hi there", "yes please"]))
    assert stats == {"echo_rate": 0.5, "loop_rate": 0.0, "top5_share": 1.0, "unique_rate": 1.0, "distinct_2": 1.0,
                     "mean_reply_words": 2.0}


# A twin, a parrot, a generic machine and an off-topic model, answering ten messages of a chat.
QUERIES = ["anyone up for board games on friday?", "the bakery on 5th reopened", "my basil plant died again",
           "what's everyone reading lately?", "the train is delayed again", "happy birthday Leo!!",
           "who fixes bikes around here?", "rain all weekend apparently", "tried the new ramen place",
           "coffee tomorrow before work?"]
REAL = ["count me in, I'll bring snacks", "no way, are the cinnamon rolls back?", "oh no, what happened?",
        "just finished a mystery set on a train", "how late will you be?", "thank you all", "try the co-op",
        "perfect excuse for a movie marathon", "better than the old diner?", "yes! usual spot?"]
GENERIC = ["ok", "lol", "sure", "nice", "haha"] * 2
OFF_TOPIC = ["THE QUARTERLY REPORT IS DUE", "PLEASE FILE YOUR EXPENSES", "THE SERVER IS DOWN AGAIN",
             "MEETING MOVED TO 3PM", "UPDATE YOUR PASSWORD TODAY", "THE PRINTER IS JAMMED",
             "BUDGET REVIEW ON MONDAY", "NEW HIRES START SOON", "OFFICE CLOSED ON FRIDAY", "SUBMIT TIMESHEETS NOW"]


def test_genericness_tells_a_canned_machine_from_the_chat() -> None:
    assert top5_share(REAL) == 0.5 and unique_rate(REAL) == 1.0      # ten different replies
    assert top5_share(GENERIC) == 1.0 and unique_rate(GENERIC) == 0.0  # five replies, each said twice
    assert top5_share(QUERIES) == 0.5                                  # a parrot is as varied as its queries
    assert top5_share(["Deal!", "deal", "DEAL", "ok"]) == 1.0 and unique_rate(["Deal!", "deal", "ok"]) == 0.3333
    assert top5_share([]) is None and unique_rate([]) is None


def test_length_w1_is_the_mean_word_gap_of_the_sorted_lengths() -> None:
    assert length_w1(REAL, REAL) == 0.0
    # generic replies have 1 word; the real ones 7, 7, 4, 8, 5, 3, 4, 6, 5, 3 ("I'll" is two) → mean gap 4.2
    assert length_w1(GENERIC, REAL) == 4.2
    assert length_w1(["a b c"], ["a", "a b c d e"]) == 2.0  # unequal sizes: half the mass moves 2 words each way
    assert length_w1([], REAL) is None


def test_style_auc_separates_what_differs_and_not_what_is_the_same() -> None:
    assert style_auc(OFF_TOPIC, REAL) == 1.0  # shouting office memos: every one told apart
    assert style_auc(REAL, REAL) <= 0.5       # the chat's own replies cannot be told from themselves
    assert style_auc(REAL[:4], REAL) is None  # too few for five folds


def test_candidate_prompts_are_seeded_and_never_the_same_text() -> None:
    queries = ["a b", "A b!", "c", "d", "e", "f", "g", "h", "i", "j"]
    candidates = candidate_prompts(queries, 7, seed=3)
    assert candidates == candidate_prompts(queries, 7, seed=3) != candidate_prompts(queries, 7, seed=4)
    for index, row in enumerate(candidates):
        assert row[0] == index and len(row) == 8 and len(set(row)) == 8
    assert 1 not in candidates[0] and 0 not in candidates[1]  # "a b" and "A b!" are the same message
    assert candidate_prompts(queries[:3], 7) == [[0, 2], [1, 2], [2, 0, 1]]  # fewer others than asked


def test_one_in_k_hit_rate() -> None:
    parrot = [[-1.0, -5, -6, -7, -5, -8, -9, -5]] * 4           # its own message always wins
    off_topic = [[-9.0, -1, -2, -3, -4, -5, -6, -7]] * 4        # never
    ignores_the_message = [[-3.0] * 8] * 4                      # the same score after every message: chance
    assert one_in_k_hit_rate(parrot) == 1.0
    assert one_in_k_hit_rate(off_topic) == 0.0
    assert one_in_k_hit_rate(ignores_the_message) == 0.125
    assert one_in_k_hit_rate([[-1.0, -1.0, -2.0], [-1.0, -3.0, -2.0]]) == 0.75  # a tie of two shares the hit
    assert one_in_k_hit_rate([[-1.0]]) is None


def test_every_printout_loops_over_one_registry() -> None:
    names = [m.name for m in MEASURES]
    assert len(names) == len(set(names))
    assert {"loss", "context_hit", "judge_hit", "style_auc", "top5_share", "unique_rate", "length_w1",
            "echo_rate", "stop_rate"} <= set(names)
    rows = measure_rows({"tuned": {"loss": 2.5, "judge_hit": 0.25}, "real": {"judge_hit": 0.2}})
    assert rows == [("loss on the real replies", ["2.50", "–"]), ("replies fit their message (judge)", ["0.25", "0.20"])]
