"""WhatsApp "Export chat" → the messages table: the real formats (../shared/data/whatsapp), every locale and layout
case, both readers held to the same table, and pairs without reply links."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest
from conftest import REPO, SHARED

from cookiebaker import ingest, pairs
from cookiebaker.errors import ExportFormatError, InputFileError
from cookiebaker.ingest import read_export, read_file
from cookiebaker.ingest.readers import ReadOptions
from cookiebaker.messages import MESSAGE_SCHEMA

WHATSAPP = SHARED / "data" / "whatsapp"
CHAT_MINER = ["test_ddmmyy_24hrs.txt", "test_mmddyy_24hrs.txt", "test_mmddyyyy_12hrs.txt", "test_yyyymmdd_24hrs.txt",
              "test_[mmddyy]_24hrs.txt"]
COLUMNS = ["chat_id", "chat_name", "chat_type", "message_id", "kind", "date", "sender", "sender_id", "text",
           "media_type", "action", "edited"]


def _module(name: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def whatsapp_dir() -> Path:
    from conftest import _require

    return _require(WHATSAPP)


def _write(tmp_path: Path, text: str, name: str = "WhatsApp Chat with Test.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def _utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=timezone.utc)


@pytest.mark.parametrize("name", CHAT_MINER)
def test_chat_miners_five_locales_give_its_expected_parse(whatsapp_dir: Path, name: str) -> None:
    expected = json.loads((whatsapp_dir / "chat-miner" / "target.json").read_text())
    read = read_file(whatsapp_dir / "chat-miner" / name, ReadOptions())
    frame = read.frame
    assert frame.schema == MESSAGE_SCHEMA and set(frame["source"]) == {"whatsapp"}
    texts = frame.filter((pl.col("kind") == "message") & (pl.col("text") != ""))
    got = [(row["date"].replace(tzinfo=None).isoformat(), row["sender"], " ".join(row["text"].split()))
           for row in texts.iter_rows(named=True)]
    assert sorted(got) == sorted((e["timestamp"], e["author"], e["message"]) for e in expected)
    assert frame.filter(pl.col("kind") == "service")["action"].to_list() == ["create_group", "add_members"]
    assert frame.filter(pl.col("media_type") == "view_once").height == 1  # "John Doe:." : a view-once photo
    order = {"test_ddmmyy_24hrs.txt": "dmy", "test_yyyymmdd_24hrs.txt": "ymd"}.get(name, "mdy")
    assert read.notes["date_order"] == order and read.notes["date_order_decided_by"]
    assert frame["chat_type"][0] == "private_group"  # "created group"


def test_ios_marks_and_system_lines_attributed_to_a_person(whatsapp_dir: Path) -> None:
    frame = read_export(whatsapp_dir / "langchain-community" / "chat_loaders_data_whatsapp_chat.txt")
    assert frame["kind"][0] == "service" and frame["action"][0] == "e2e_notice" and frame["sender"][0] is None
    photos = frame.filter(pl.col("media_type") == "photo")
    assert photos.height == 3 and set(photos["text"]) == {""} and set(photos["sender"]) == {"Dr. Feather"}
    assert frame["date"][1] == _utc(2023, 8, 15, 9, 12, 43) and frame["date"][-1] == _utc(2023, 8, 15, 21, 25, 16)
    assert frame["chat_type"][0] == "personal_chat"  # two people, no group event
    assert not frame["text"].str.contains("\u200e").any()


def test_a_mixed_format_file_is_refused_in_one_line(whatsapp_dir: Path) -> None:
    path = whatsapp_dir / "langchain-community" / "examples_whatsapp_chat.txt"
    with pytest.raises(ExportFormatError) as raised:
        read_export(path)
    message = str(raised.value)
    assert message.startswith(str(path)) and "more than one format" in message and "lines 1 and 3" in message
    assert "\n" not in message


ANDROID_12H = (
    "\ufeff7/19/22, 11:32\u202fPM - ~\u202fUser One: Hello\r\n"
    "7/19/22, 11:33\u202fPM - User Two: Bye\r\n"
    "7/20/22, 11:32\u00a0am - User Three: <Media omitted>\r\n"
    "7/20/22, 12:05 a. m. - User Two: This message was deleted\r\n"
    "7/20/22, 12:06 p. m. - User One: typo fixed <This message was edited>\r\n"
    "7/21/22, 9:00 AM - +1 555 123 4567: who is this\r\n"
    "7/21/22, 9:01 AM - User One left\r\n"
)


def test_twelve_hour_clocks_invisible_spaces_and_the_android_cases(tmp_path: Path) -> None:
    read = read_file(_write(tmp_path, ANDROID_12H), ReadOptions())
    frame = read.frame
    assert read.notes["date_order"] == "mdy"
    assert frame["date"].to_list() == [_utc(2022, 7, 19, 23, 32), _utc(2022, 7, 19, 23, 33), _utc(2022, 7, 20, 11, 32),
                                       _utc(2022, 7, 20, 0, 5), _utc(2022, 7, 20, 12, 6), _utc(2022, 7, 21, 9, 0),
                                       _utc(2022, 7, 21, 9, 1)]
    assert frame["sender"][0] == "User One"  # "~ Name": not a contact, the name all the same
    assert (frame["media_type"][2], frame["text"][2]) == ("file", "")
    assert (frame["kind"][3], frame["action"][3], frame["text"][3]) == ("service", "delete_message", "")
    assert (frame["text"][4], frame["edited"][4]) == ("typo fixed", _utc(2022, 7, 20, 12, 6))
    contact = frame.row(5, named=True)
    shown = contact["sender"] + " " + contact["sender_id"]
    assert contact["sender"].startswith("Contact ") and "555 123" not in shown and "5551234567" not in shown
    assert (frame["kind"][6], frame["action"][6]) == ("service", "leave")
    assert frame["chat_name"][0] == "Test" and frame["chat_type"][0] == "private_group"  # three people


FINNISH = "12.3.2023 klo 14.30 - Matti: Moi\n13.3.2023 klo 9.05 - Liisa: Hei!\n"
GERMAN_SECONDS = "[04.05.23, 16:13:23] Anna: Hallo\n[04.05.23, 16:14:01] Ben: Na?\n"


def test_locales(tmp_path: Path) -> None:
    finnish = read_file(_write(tmp_path, FINNISH, "fi.txt"), ReadOptions())
    assert finnish.frame["date"].to_list() == [_utc(2023, 3, 12, 14, 30), _utc(2023, 3, 13, 9, 5)]
    german = read_export(_write(tmp_path, GERMAN_SECONDS, "de.txt"))
    assert german["date"].to_list() == [_utc(2023, 5, 4, 16, 13, 23), _utc(2023, 5, 4, 16, 14, 1)]
    assert german["chat_name"][0] == "de"  # no name in the file's name: the file's stem


MULTILINE = (
    "01/02/2023, 10:00 - Ann: first line\n"
    "12/03/2021 was the day we met\n"   # a continuation that starts with a date (no time, no dash)
    "\n"
    "and a blank line above\n"
    "01/02/2023, 10:05 - Ben: short\n"
)


def test_a_line_without_a_header_continues_the_message(tmp_path: Path) -> None:
    frame = read_export(_write(tmp_path, MULTILINE))
    assert frame["text"].to_list() == ["first line\n12/03/2021 was the day we met\n\nand a blank line above", "short"]


def _dates(days: list[int], month: int = 2) -> str:
    return "".join(f"{day:02d}/{month:02d}/2023, 10:00 - {'Ann' if day % 2 else 'Ben'}: hi\n" for day in days)


def test_the_date_order_is_decided_for_the_whole_file(tmp_path: Path) -> None:
    # No part above 12: the part that changes more often is the day (1, 2, ... 9 of February, day first).
    read = read_file(_write(tmp_path, _dates(list(range(1, 10)))), ReadOptions())
    assert read.notes["date_order"] == "dmy" and "changes more often" in read.notes["date_order_decided_by"]
    assert read.frame["date"][1] == _utc(2023, 2, 2, 10, 0)
    read = read_file(_write(tmp_path, _dates(list(range(1, 10)))), ReadOptions(date_order="mdy"))
    assert read.notes == {**read.notes, "date_order": "mdy", "date_order_decided_by": "the date_order option"}
    assert read.frame["date"][1] == _utc(2023, 2, 2, 10, 0).replace(month=2, day=2) and \
        read.frame["date"][2] == _utc(2023, 3, 2, 10, 0)
    # One day above 12 anywhere in the file decides every line, the first ones too.
    read = read_file(_write(tmp_path, _dates([1, 2, 3, 25])), ReadOptions())
    assert read.notes["date_order"] == "dmy" and read.frame["date"][0] == _utc(2023, 2, 1, 10, 0)
    with pytest.raises(ExportFormatError, match=r"line 1: .*a part above 12 first and second"):
        read_export(_write(tmp_path, "13/01/2023, 10:00 - A: x\n01/13/2023, 10:00 - B: y\n"))


def test_zips_and_names(tmp_path: Path) -> None:
    ios = tmp_path / "WhatsApp Chat - Weekend crew.zip"
    with zipfile.ZipFile(ios, "w") as archive:
        archive.writestr("_chat.txt", GERMAN_SECONDS)
        archive.writestr("00000012-PHOTO-2023-05-04-16-13-23.jpg", b"\xff\xd8")
    android = tmp_path / "backup.zip"
    with zipfile.ZipFile(android, "w") as archive:
        archive.writestr("WhatsApp Chat with Anna.txt", FINNISH)
    assert read_export(ios)["chat_name"][0] == "Weekend crew"
    assert read_export(android)["chat_name"][0] == "Anna"
    assert read_export(ios)["chat_id"][0] == read_export(_write(tmp_path, GERMAN_SECONDS, "Weekend crew.txt"))[
        "chat_id"][0]  # the id is the name's digest, however the chat was saved
    empty = tmp_path / "other.zip"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("a.txt", "x")
        archive.writestr("b.txt", "y")
    with pytest.raises(ExportFormatError, match="the zip holds no WhatsApp chat"):
        read_export(empty)
    subject = read_export(_write(tmp_path, '01/02/2023, 10:00 - Ann created group "Pizza people"\n'
                                           "01/02/2023, 10:01 - Ann: hi\n", "chat.txt"))
    assert subject["chat_name"][0] == "Pizza people"


def test_folders_expand_to_every_format_and_files_are_read_by_content(tmp_path: Path, whatsapp_dir: Path) -> None:
    from discord_fixtures import write as write_discord

    folder = tmp_path / "SFW"
    (folder / "wa").mkdir(parents=True)
    (folder / "wa" / "notes.txt").write_bytes(FINNISH.encode())  # named anything
    write_discord(folder / "general.json")
    with zipfile.ZipFile(folder / "wa" / "export.zip", "w") as archive:
        archive.writestr("_chat.txt", GERMAN_SECONDS)
    (folder / "telegram.json").write_bytes((SHARED / "data" / "telegram" / "tg2md" / "result.json").read_bytes())
    report = ingest.run(ingest.IngestConfig(inputs=[str(folder)], output=str(tmp_path / "m.parquet")))
    assert report["files_by_source"] == {"telegram": 1, "whatsapp": 2, "discord": 1}
    assert {n["source"] for n in report["read_as"]} == {"telegram", "whatsapp", "discord"}
    assert next(n for n in report["read_as"] if n["file"].endswith("notes.txt"))["date_order"] == "dmy"
    table = pl.read_parquet(tmp_path / "m.parquet")
    assert set(table["source"]) == {"telegram", "whatsapp", "discord"}
    (folder / "README.txt").write_text("these are our chats")
    with pytest.raises(ExportFormatError, match=r"README.txt: line 1: "):
        ingest.run(ingest.IngestConfig(inputs=[str(folder)], output=str(tmp_path / "m2.parquet")))
    assert not (tmp_path / "m2.parquet").exists()


def test_bad_bytes_name_the_file_and_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes("01/02/2023, 10:00 - Jos\u00e9: ol\u00e1\n".encode("latin-1"))
    with pytest.raises(ExportFormatError, match=r"latin.txt: the file is not valid UTF-8 \(byte 23\)"):
        read_export(path)
    with pytest.raises(InputFileError, match="no line starts like a WhatsApp message"):
        read_export(_write(tmp_path, "hello\nworld\n", "plain.txt"))


@pytest.mark.parametrize(("style", "locale"), [("android", "en_US"), ("android", "de"), ("ios", "en_GB"),
                                               ("ios", "fi"), ("android", "fi"), ("ios", "en_US")])
def test_both_readers_give_the_same_table(tmp_path: Path, style: str, locale: str, whatsapp_dir: Path) -> None:
    """Oracle: the columnar reader equals the straightforward per-line one (bench/straightforward_whatsapp.py) on
    synthetic exports of every layout and on the real fixtures."""
    synth, straightforward = _module("synth_whatsapp"), _module("straightforward_whatsapp")
    path = tmp_path / "chat.txt"
    synth.write(str(path), 5000, style, locale, seed=hash((style, locale)) % 1000)
    files = [path, *(whatsapp_dir / "chat-miner" / name for name in CHAT_MINER),
             whatsapp_dir / "langchain-community" / "chat_loaders_data_whatsapp_chat.txt"]
    for file in files:
        fast = read_export(file).select(COLUMNS)
        slow = pl.from_pandas(straightforward.read(str(file))).select(COLUMNS).cast(fast.schema)
        assert fast.equals(slow), file


def test_pairs_find_replies_without_reply_links(tmp_path: Path) -> None:
    text = ("01/02/2023, 10:00 - Ann: pizza tonight?\n"
            "01/02/2023, 10:02 - Ben: yes!\n"
            "01/02/2023, 10:02 - Ben: with olives\n"          # his burst
            "01/02/2023, 10:30 - Ann: ok, at 8\n"             # 28 minutes later: answers nothing
            "01/02/2023, 10:31 - Carl: <Media omitted>\n"     # media: no text to answer with
            "01/02/2023, 10:32 - Ann: nice photo\n")          # answers the photo: no query text
    ingest.run(ingest.IngestConfig(inputs=[str(_write(tmp_path, text))], output=str(tmp_path / "m.parquet")))
    report = pairs.run(pairs.PairsConfig(input=str(tmp_path / "m.parquet"), output=str(tmp_path / "qa.parquet")))
    qa = pl.read_parquet(tmp_path / "qa.parquet")
    assert qa.select("query", "response").rows() == [("pizza tonight?", "yes!\nwith olives")]
    assert report["implicit_reply_candidates"] == 5 and report["implicit_pairs"] == 1
    assert report["dropped"]["no_recent_message"] == 2  # the first message, and the one half an hour later
    assert report["dropped"]["response_empty"] == 1 and report["dropped"]["query_empty"] == 1
    never = pairs.run(pairs.PairsConfig(input=str(tmp_path / "m.parquet"), output=str(tmp_path / "qa2.parquet"),
                                        implicit_replies="never"))
    assert never["pairs"] == 0 and never["implicit_reply_candidates"] == 0


def test_implicit_pairs_equal_the_straightforward_loop(tmp_path: Path) -> None:
    """Oracle: pairs' columnar implicit replies equal a row-by-row loop over the same rule."""
    synth, straightforward = _module("synth_whatsapp"), _module("straightforward_whatsapp")
    path = tmp_path / "chat.txt"
    synth.write(str(path), 20_000, "android", "en_US", seed=4)
    ingest.run(ingest.IngestConfig(inputs=[str(path)], output=str(tmp_path / "m.parquet")))
    report = pairs.run(pairs.PairsConfig(input=str(tmp_path / "m.parquet"), output=str(tmp_path / "qa.parquet")))
    ours = pl.read_parquet(tmp_path / "qa.parquet")
    theirs = straightforward.pairs(straightforward.read(str(path)))
    assert report["implicit_pairs"] == ours.height == len(theirs) > 5000
    assert sorted(zip(ours["query"], ours["response"])) == sorted(zip(theirs["query"], theirs["response"]))
