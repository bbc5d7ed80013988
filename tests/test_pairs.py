from __future__ import annotations

import importlib.util
from pathlib import Path

import polars as pl
import pytest
from conftest import REPO, msg, service, synth_export, write_chat

from cookiebaker import ingest, pairs
from cookiebaker.config import build_config
from cookiebaker.errors import ConfigError, DatasetError
from cookiebaker.pairs import PairsConfig
from cookiebaker.pairs.privacy import Scrubber, luhn_valid

T0 = 1_700_000_000
A, B, C = {"sender": "Alice", "sender_id": "user1"}, {"sender": "Bob", "sender_id": "user2"}, {"sender": "Carol", "sender_id": "user3"}


def make_pairs(tmp_path: Path, messages: list[dict], **options) -> tuple[pl.DataFrame, dict]:
    write_chat(tmp_path / "chat.json", messages)
    ingest.run(ingest.IngestConfig(inputs=[str(tmp_path / "chat.json")], output=str(tmp_path / "m.parquet")))
    config = PairsConfig(input=str(tmp_path / "m.parquet"), output=str(tmp_path / "qa.parquet"), **options)
    report = pairs.run(config)
    assert set(report) <= set(pairs.PairsReport.__annotations__)  # one set of keys in both modes
    return pl.read_parquet(tmp_path / "qa.parquet"), report


def test_reply_with_burst(tmp_path: Path) -> None:
    frame, report = make_pairs(tmp_path, [
        msg(1, "anyone up for pizza?", **A, date=T0),
        msg(2, "me!", **B, date=T0 + 60, reply_to_message_id=1),
        msg(3, "with olives", **B, date=T0 + 90),
        msg(4, "and extra cheese", **B, date=T0 + 200),
        msg(5, "ok", **A, date=T0 + 230),
    ])
    assert frame.select("query", "response").rows() == [("anyone up for pizza?", "me!\nwith olives\nand extra cheese")]
    assert frame["response_message_ids"].to_list() == [[2, 3, 4]]
    assert frame.row(0, named=True)["query_sender_id"] == "user1"
    assert frame.row(0, named=True)["response_sender_id"] == "user2"
    assert report["pairs"] == 1 and report["pairs_with_burst"] == 1 and report["burst_messages_merged"] == 2


@pytest.mark.parametrize("breaker", ["gap", "other sender", "reply", "service", "forward"])
def test_burst_stops(tmp_path: Path, breaker: str) -> None:
    follow = {
        "gap": msg(3, "much later", **B, date=T0 + 60 + 5 * 60 + 1),
        "other sender": msg(3, "me too", **C, date=T0 + 70),
        "reply": msg(3, "answering myself", **B, date=T0 + 70, reply_to_message_id=2),
        "service": service(3, actor="Bob", actor_id="user2", date=T0 + 70),
        "forward": msg(3, "look at this", **B, date=T0 + 70, forwarded_from="News"),
    }[breaker]
    frame, _ = make_pairs(tmp_path, [msg(1, "q", **A, date=T0), msg(2, "a", **B, date=T0 + 60, reply_to_message_id=1),
                                     follow, msg(4, "tail", **B, date=T0 + 80)])
    assert frame.filter(pl.col("query_message_id") == 1)["response"].to_list() == ["a"]


def test_burst_window_is_configurable_and_empty_burst_messages_add_nothing(tmp_path: Path) -> None:
    messages = [msg(1, "q", **A, date=T0), msg(2, "a", **B, date=T0 + 60, reply_to_message_id=1),
                msg(3, "", **B, date=T0 + 100, photo="(File not included. Change data exporting settings to download.)"),
                msg(4, "b", **B, date=T0 + 100 + 9 * 60)]
    frame, _ = make_pairs(tmp_path, messages, burst_window_minutes=10)
    assert frame["response"].to_list() == ["a\nb"] and frame["response_message_ids"].to_list() == [[2, 3, 4]]
    frame, _ = make_pairs(tmp_path, messages)
    assert frame["response"].to_list() == ["a"]


CASES = {
    "target_not_in_export": [msg(2, "a", **B, reply_to_message_id=99)],
    "reply_into_other_chat": [msg(1, "local q", **A), msg(2, "a", **B, reply_to_message_id=1, reply_to_peer_id="channel777")],
    "response_forwarded": [msg(1, "q", **A), msg(2, "a", **B, reply_to_message_id=1, forwarded_from=None)],
    "response_via_bot": [msg(1, "q", **A), msg(2, "a", **B, reply_to_message_id=1, via_bot="@gif")],
    "response_from_bot": [msg(1, "q", **A), msg(2, "a", sender="GroupHelpBot", sender_id="user9", reply_to_message_id=1)],
    "query_not_a_message": [service(1), msg(2, "a", **B, reply_to_message_id=1)],
    "query_forwarded": [msg(1, "q", **A, forwarded_from="Someone"), msg(2, "a", **B, reply_to_message_id=1)],
    "query_via_bot": [msg(1, "q", **A, via_bot="@gif"), msg(2, "a", **B, reply_to_message_id=1)],
    "query_from_bot": [msg(1, "q", sender="Helper Bot", sender_id="user9"), msg(2, "a", **B, reply_to_message_id=1)],
    "response_empty": [msg(1, "q", **A), msg(2, "", **B, reply_to_message_id=1, photo="photos/p.jpg")],
    "query_empty": [msg(1, "", **A, file="(File not included.)", media_type="sticker"),
                    msg(2, "a", **B, reply_to_message_id=1)],
    "self_reply": [msg(1, "q", **A), msg(2, "a", **A, reply_to_message_id=1)],
}


@pytest.mark.parametrize("reason", list(CASES))
def test_every_drop_rule(tmp_path: Path, reason: str) -> None:
    frame, report = make_pairs(tmp_path, CASES[reason])
    assert frame.height == 0
    assert report["dropped"][reason] == 1
    assert sum(report["dropped"].values()) == report["reply_candidates"] == 1


def test_bot_sender_ids_and_opt_out_and_speaker_filter(tmp_path: Path) -> None:
    messages = [msg(1, "q1", **A, date=T0), msg(2, "a1", **B, reply_to_message_id=1, date=T0 + 60),
                msg(3, "q2", **B, date=T0 + 3600), msg(4, "a2", **C, reply_to_message_id=3, date=T0 + 3660),
                msg(5, "q3", **C, date=T0 + 7200), msg(6, "a3", **A, reply_to_message_id=5, date=T0 + 7260)]
    frame, _ = make_pairs(tmp_path, messages)
    assert frame.height == 3
    frame, report = make_pairs(tmp_path, messages, bot_sender_ids=["user2"])
    assert report["dropped"]["response_from_bot"] == 1 and report["dropped"]["query_from_bot"] == 1
    frame, report = make_pairs(tmp_path, messages, privacy={"opt_out_sender_ids": [3]})
    assert frame["response"].to_list() == ["a1"] and report["dropped"]["opted_out"] == 2
    frame, report = make_pairs(tmp_path, messages, response_sender_ids=["user1", "user2"])
    assert sorted(frame["response"]) == ["a1", "a3"] and report["dropped"]["response_sender_not_selected"] == 1


def test_scrubbing_in_samples_and_report(tmp_path: Path) -> None:
    frame, report = make_pairs(tmp_path, [
        msg(1, "call me on +7 912 345-67-89 or mail bob@example.com", **A),
        msg(2, "my card is 4111 1111 1111 1111, the order 2023-01-15 12:30", **B, reply_to_message_id=1),
    ])
    row = frame.row(0, named=True)
    assert row["query"] == "call me on [PHONE] or mail [EMAIL]"
    assert row["response"] == "my card is [CARD], the order 2023-01-15 12:30"
    assert report["scrubbed"] == {"email": 1, "card": 1, "phone": 1, "name": 0}
    frame, report = make_pairs(tmp_path, [msg(1, "mail bob@example.com", **A), msg(2, "ok", **B, reply_to_message_id=1)],
                               privacy={"scrub_emails": False})
    assert frame["query"].to_list() == ["mail bob@example.com"]


@pytest.mark.parametrize(("text", "expected"), [
    ("4111 1111 1111 1111", "[CARD]"), ("4111-1111-1111-1112", "4111-1111-1111-1112"),
    ("+1 (555) 123-4567", "[PHONE]"), ("(555) 123-4567", "[PHONE]"), ("8 912 345 67 89", "[PHONE]"),
    ("1 000 000 000 rubles", "1 000 000 000 rubles"), ("on 12.03.2024", "on 12.03.2024"),
    ("version 1.2.3", "version 1.2.3"), ("a.b-c+d@mail.example.org", "[EMAIL]"), ("@handle", "@handle"),
])
def test_scrubber_cases(text: str, expected: str) -> None:
    assert Scrubber().scrub(text) == expected


def test_scrubbing_a_column_equals_scrubbing_every_text() -> None:
    """The vectorized pre-filter only skips texts the patterns cannot match."""
    texts = ["4111 1111 1111 1111", "+1 (555) 123-4567", "(555) 123-4567", "8 912 345 67 89", "x²@a.example.com",
             "józef@przykład.pl", "+٧ ٩١٢ ٣٤٥ ٦٧ ٨٩", "call ٠١٢٣٤٥٦٧٨٩", "@handle", "1 000 000 000 rubles",
             "no digits", "12 cats 345 dogs 6789 birds", "a@b", "mail: first.last+tag@sub.example.co.uk.", ""]
    by_column = Scrubber().scrub_column(pl.DataFrame({"text": texts}), "text")["text"].to_list()
    assert by_column == [Scrubber().scrub(text) for text in texts]
    assert by_column[4] == "[EMAIL]" and by_column[6] == "[PHONE]"


def test_luhn() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")


def test_conversations(tmp_path: Path) -> None:
    messages = [
        msg(1, "hi all", **A, date=T0), msg(2, "hey", **B, date=T0 + 10), msg(3, "what's up", **B, date=T0 + 20),
        msg(4, "not much", **A, date=T0 + 30), service(5, date=T0 + 35), msg(6, "cool", **C, date=T0 + 40),
        # a new session after two hours
        msg(7, "morning", **B, date=T0 + 7200), msg(8, "morning!", **A, date=T0 + 7210),
        msg(9, "lonely", **C, date=T0 + 20000),
    ]
    frame, report = make_pairs(tmp_path, messages, mode="conversations", speakers="none")
    convs = frame["messages"].to_list()
    assert [{k: t[k] for k in ("role", "content")} for t in convs[0]] == [
        {"role": "user", "content": "hi all"}, {"role": "assistant", "content": "hey\nwhat's up"},
        {"role": "user", "content": "not much"}, {"role": "assistant", "content": "cool"}]
    assert [{k: t[k] for k in ("role", "content")} for t in convs[1]] == [
        {"role": "user", "content": "morning"}, {"role": "assistant", "content": "morning!"}]
    assert {t["speaker"] for conv in convs for t in conv} == {None}  # speakers: none
    assert len(convs) == 2 and report["sessions"] == 3 and report["sessions_without_exchange"] == 1
    assert report["dropped"]["not_a_message"] == 1 and "messages_dropped" not in report
    for conv in convs:
        roles = [turn["role"] for turn in conv]
        assert roles[0] == "user" and roles[-1] == "assistant"
        assert all(a != b for a, b in zip(roles, roles[1:]))


def test_conversations_speaking_as_one_person_and_max_turns(tmp_path: Path) -> None:
    messages = [msg(i, f"m{i}", **(B if i % 3 == 0 else A if i % 3 == 1 else C), date=T0 + i * 10) for i in range(1, 13)]
    frame, _ = make_pairs(tmp_path, messages, mode="conversations", response_sender_ids=["user2"], speakers="none")
    (conv,) = frame["messages"].to_list()
    assert [t["role"] for t in conv] == ["user", "assistant"] * 4
    assert conv[0]["content"] == "m1\nm2" and conv[1]["content"] == "m3"
    frame, _ = make_pairs(tmp_path, messages, mode="conversations", response_sender_ids=["user2"])  # names
    assert frame["messages"].to_list()[0][0]["content"] == "Alice: m1\nCarol: m2"  # two people stay two people
    frame, _ = make_pairs(tmp_path, messages, mode="conversations", response_sender_ids=["user2"], max_turns=2)
    assert frame.height == 4 and set(frame["turns"]) == {2}


def test_equals_the_straightforward_implementation(synth_tool: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("straightforward", REPO / "bench" / "straightforward.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    path, _ = synth_export(synth_tool, tmp_path / "s.json", 20_000, seed=7)
    expected = reference.pairs(reference.ingest(str(path)))
    ingest.run(ingest.IngestConfig(inputs=[str(path)], output=str(tmp_path / "m.parquet")))
    pairs.run(PairsConfig(input=str(tmp_path / "m.parquet"), output=str(tmp_path / "qa.parquet")))
    actual = pl.read_parquet(tmp_path / "qa.parquet")
    key = ["chat_id", "query_message_id", "response_message_ids", "query", "response", "query_sender_id",
           "response_sender_id"]
    assert actual.height == len(expected) > 2000
    assert sorted(actual.select(key).rows()) == sorted(
        pl.from_pandas(expected).with_columns(pl.col("response_message_ids").cast(pl.List(pl.Int64))).select(key).rows())


def test_config_errors_name_every_bad_option() -> None:
    with pytest.raises(ConfigError) as raised:
        build_config(PairsConfig, "pairs", {"pairs": {"max_turns": 3, "colour": "red", "burst_window_minutes": 0,
                                                      "privacy": {"opt_out": [1]}}})
    message = str(raised.value)
    for name in ("max_turns", "colour", "burst_window_minutes", "privacy.opt_out"):
        assert name in message
    with pytest.raises(ConfigError, match="opted-out"):
        build_config(PairsConfig, "pairs", {"pairs": {"response_sender_ids": ["user5"],
                                                      "privacy": {"opt_out_sender_ids": [5]}}})


def test_bad_messages_table(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="run `cookiebaker ingest` first"):
        pairs.run(PairsConfig(input=str(tmp_path / "nope.parquet"), output=str(tmp_path / "o.parquet")))
    pl.DataFrame({"x": [1]}).write_parquet(tmp_path / "other.parquet")
    with pytest.raises(DatasetError, match="missing column"):
        pairs.run(PairsConfig(input=str(tmp_path / "other.parquet"), output=str(tmp_path / "o.parquet")))
    (tmp_path / "text.parquet").write_text("hello")
    with pytest.raises(DatasetError, match="not a readable Parquet"):
        pairs.run(PairsConfig(input=str(tmp_path / "text.parquet"), output=str(tmp_path / "o.parquet")))


# ---- Context and speakers (issue 19): what the service gives with every message, in the training samples ----

def _thread() -> list[dict]:
    return [
        msg(1, "pizza tonight?", **A, date=T0),
        msg(2, "I'm in, Carol says hi", **C, date=T0 + 30),
        msg(3, "where?", **B, date=T0 + 60, reply_to_message_id=1),
        msg(4, "at mine", **A, date=T0 + 90, reply_to_message_id=3),
        msg(5, "50% off pizza", **C, date=T0 + 100, forwarded_from="Deals"),
        msg(6, "see you", **B, date=T0 + 120, reply_to_message_id=4),
        msg(7, "new topic", **C, date=T0 + 10_000),  # after a silence of over an hour: a new session
        msg(8, "ok", **A, date=T0 + 10_030, reply_to_message_id=7),
    ]


def _contexts(frame: pl.DataFrame) -> dict[str, list[tuple]]:
    return {row["query"]: [(t["speaker"], t["content"]) for t in row["context"]] for row in frame.iter_rows(named=True)}


def test_context_is_the_sessions_messages_before_the_query(tmp_path: Path) -> None:
    frame, _ = make_pairs(tmp_path, _thread(), context_turns=2, speakers="names")
    assert _contexts(frame) == {
        "pizza tonight?": [],
        "where?": [("Alice", "pizza tonight?"), ("Carol", "I'm in, Carol says hi")],
        "at mine": [("Carol", "I'm in, Carol says hi"), ("Bob", "where?")],  # at most 2; the forward is no context
        "new topic": [],  # the silence before it ends the session
    }
    assert dict(zip(frame["query"], frame["query_speaker"])) == {"pizza tonight?": "Alice", "where?": "Bob",
                                                                  "at mine": "Alice", "new topic": "Carol"}
    frame, _ = make_pairs(tmp_path, _thread(), context_turns=10, speakers="aliases")
    assert _contexts(frame)["at mine"] == [("Member 1", "pizza tonight?"), ("Member 2", "I'm in, Carol says hi"),
                                           ("Member 3", "where?")]  # in the order they first wrote
    frame, _ = make_pairs(tmp_path, _thread(), context_turns=10, speakers="none")
    assert {s for c in _contexts(frame).values() for s, _ in c} == {None} and set(frame["query_speaker"]) == {None}
    frame, _ = make_pairs(tmp_path, _thread(), context_turns=0)  # the query alone
    assert all(not c for c in _contexts(frame).values())
    frame, _ = make_pairs(tmp_path, _thread())  # the default: six earlier messages, with their speakers' names
    assert _contexts(frame)["at mine"] == [("Alice", "pizza tonight?"), ("Carol", "I'm in, Carol says hi"),
                                           ("Bob", "where?")]


def test_opted_out_senders_are_neither_context_nor_names(tmp_path: Path) -> None:
    frame, report = make_pairs(tmp_path, _thread(), context_turns=10, speakers="names",
                               privacy={"opt_out_sender_ids": ["user3"]})
    contexts = _contexts(frame)
    assert contexts["at mine"] == [("Alice", "pizza tonight?"), ("Bob", "where?")]
    assert "new topic" not in contexts  # Carol's message is no query either
    text = " ".join([*frame["query"], *frame["response"], *(c for turns in contexts.values() for _, c in turns)])
    assert "Carol" not in text and report["scrubbed"]["name"] == 0  # her only mention was in her own message
    messages = _thread()
    messages[2] = msg(3, "where? ask Carol", **B, date=T0 + 60, reply_to_message_id=1)
    frame, report = make_pairs(tmp_path, messages, context_turns=10, speakers="names",
                               privacy={"opt_out_sender_ids": ["user3"]})
    assert "where? ask [NAME]" in frame["query"].to_list() and report["scrubbed"]["name"] == 3  # query, response, context


def test_samples_render_speakers_as_the_service_does(tmp_path: Path) -> None:
    from cookiebaker.chat import normalize, samples_to_messages

    frame, _ = make_pairs(tmp_path, _thread(), context_turns=2, speakers="names")
    sample = samples_to_messages(frame.filter(pl.col("query") == "at mine"))[0]
    assert normalize(sample, system_role=True) == [
        {"role": "user", "content": "Carol: I'm in, Carol says hi\nBob: where?\nAlice: at mine"},
        {"role": "assistant", "content": "see you"}]  # several people in a row stay several people


def test_conversations_keep_speakers(tmp_path: Path) -> None:
    frame, _ = make_pairs(tmp_path, _thread(), mode="conversations", speakers="names")
    first = frame["messages"].to_list()[0]
    assert [(t["role"], t["speaker"]) for t in first][:3] == [("user", "Alice"), ("assistant", "Carol"),
                                                              ("user", "Bob")]
    frame, _ = make_pairs(tmp_path, _thread(), mode="conversations", speakers="names", response_sender_ids=["user2"])
    first = frame["messages"].to_list()[0]
    assert first[0] == {"role": "user", "content": "Alice: pizza tonight?\nCarol: I'm in, Carol says hi",
                        "speaker": None}  # merged: each line keeps its speaker


def _straightforward_context(messages: pl.DataFrame, pairs_frame: pl.DataFrame, turns: int,
                             gap_minutes: float) -> list[list[tuple]]:
    """For each pair, walk back from its query over the chat's eligible messages, one by one."""
    rows = messages.to_dicts()
    index = {(r["chat_id"], r["message_id"]): i for i, r in enumerate(rows)}

    def eligible(r: dict) -> bool:
        return (r["kind"] == "message" and not r["forwarded"] and r["via_bot"] is None and r["text"] != ""
                and not (r["sender"] or "").lower().rstrip().endswith("bot"))

    out = []
    for pair in pairs_frame.iter_rows(named=True):
        q = index[(pair["chat_id"], pair["query_message_id"])]
        found, newer = [], rows[q]
        for i in range(q - 1, -1, -1):
            r = rows[i]
            if r["chat_id"] != newer["chat_id"] or len(found) == turns:
                break
            if not eligible(r):
                continue
            if (newer["date"] - r["date"]).total_seconds() > gap_minutes * 60:
                break
            found.insert(0, (r["sender"], r["text"]))
            newer = r
        out.append(found)
    return out


def test_context_equals_the_straightforward_walk(synth_tool: Path, tmp_path: Path) -> None:
    path, _ = synth_export(synth_tool, tmp_path / "s.json", 20_000, seed=11)
    ingest.run(ingest.IngestConfig(inputs=[str(path)], output=str(tmp_path / "m.parquet")))
    for turns, gap in ((3, 60.0), (10, 5.0)):
        pairs.run(PairsConfig(input=str(tmp_path / "m.parquet"), output=str(tmp_path / "qa.parquet"),
                              context_turns=turns, session_gap_minutes=gap, speakers="names",
                              privacy={"scrub_phone_numbers": False, "scrub_emails": False,
                                       "scrub_card_numbers": False}))
        actual = pl.read_parquet(tmp_path / "qa.parquet")
        expected = _straightforward_context(pl.read_parquet(tmp_path / "m.parquet"), actual, turns, gap)
        got = [[(t["speaker"], t["content"]) for t in c] for c in actual["context"].to_list()]
        assert got == expected and sum(map(len, got)) > 1000  # and there is context to compare
