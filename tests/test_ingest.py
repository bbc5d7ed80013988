from __future__ import annotations

import errno
import json
import os
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from conftest import msg, run_cli, service, synth_export, write_chat

from cookiebaker import ingest
from cookiebaker.errors import ExportFormatError, InputFileError
from cookiebaker.ingest import IngestConfig, read_export, telegram
from cookiebaker.ingest.telegram import bulk
from cookiebaker.messages import MESSAGE_SCHEMA

REAL_FILES = [
    "akarsh1995/telegram.json", "bitnada/result-2021.json", "dogs_community/result.json",
    "innerdvations/private_channel.json", "innerdvations/public_supergroup.json", "innerdvations/saved.json",
    "pachumarchive/result.json", "ragtgbot/result.json", "tele_statistics_offline/result.json", "tg2md/result.json",
    "trantor_library/result.json", "uponthepathofsalaf/result.json",
]


def _reference_chats(path: Path) -> list[dict]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    if "messages" in doc:
        return [doc]
    return doc["chats"]["list"] + doc.get("left_chats", {}).get("list", [])


def _reference_text(m: dict) -> str:
    if "text_entities" in m:
        return "".join(e["text"] for e in m["text_entities"])
    text = m.get("text", "")
    return text if isinstance(text, str) else "".join(p if isinstance(p, str) else p["text"] for p in text)


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_export_rows_kinds_and_texts(telegram_dir: Path, name: str) -> None:
    path = telegram_dir / name
    frame = read_export(path)
    chats = _reference_chats(path)
    entries = [m for chat in chats for m in chat["messages"]]
    assert frame.height == len(entries)
    assert frame.schema == MESSAGE_SCHEMA
    assert Counter(frame["kind"]) == Counter(m["type"] for m in entries)
    assert frame["text"].to_list() == [_reference_text(m) for m in entries]
    assert frame["message_id"].to_list() == [m["id"] for m in entries]
    assert frame["text"].null_count() == 0
    assert frame["date"].null_count() == sum(1 for m in entries if "date" not in m)
    assert frame["source_file"].unique().to_list() == [str(path)]


def test_every_real_export_in_the_folder_is_covered(telegram_dir: Path) -> None:
    assert sorted(str(p.relative_to(telegram_dir)) for p in telegram_dir.rglob("*.json")) == sorted(REAL_FILES)


def test_peer_id_eras(telegram_dir: Path) -> None:
    bitnada = read_export(telegram_dir / "bitnada/result-2021.json")  # 2021: shifted integer ids
    assert bitnada["chat_id"].unique().to_list() == [1101706805]
    assert bitnada["sender_id"].unique().to_list() == ["channel1101706805"]
    akarsh = read_export(telegram_dir / "akarsh1995/telegram.json")  # 2019: plain int32 user ids
    assert set(akarsh["sender_id"]) == {"user788849164", "user289567837"}
    assert akarsh["chat_id"].unique().to_list() == [788849164]
    ragtg = read_export(telegram_dir / "ragtgbot/result.json")  # since 2021: "user…" strings, bare chat id
    assert ragtg["chat_id"].unique().to_list() == [4696915167]
    assert "user12345678" in set(ragtg["sender_id"])


def test_dates_prefer_unixtime_and_ignore_the_epoch_edit(telegram_dir: Path) -> None:
    dogs = read_export(telegram_dir / "dogs_community/result.json")
    first = json.loads((telegram_dir / "dogs_community/result.json").read_text())["messages"][0]
    assert dogs["date"][0].timestamp() == int(first["date_unixtime"])
    tg2md = read_export(telegram_dir / "tg2md/result.json")  # no unixtime: the local date read as UTC
    assert str(tg2md["date"][0]) == "2020-11-12 12:53:52+00:00"
    assert tg2md["edited"].drop_nulls().len() > 0
    akarsh = read_export(telegram_dir / "akarsh1995/telegram.json")
    assert akarsh["edited"].null_count() == akarsh.height  # "1970-01-01T05:30:00" everywhere means unedited


def test_reply_into_another_chat(telegram_dir: Path) -> None:
    dogs = read_export(telegram_dir / "dogs_community/result.json")
    raw = json.loads((telegram_dir / "dogs_community/result.json").read_text())["messages"]
    assert dogs["reply_to_chat_id"].drop_nulls().len() == sum(1 for m in raw if "reply_to_peer_id" in m) == 22
    assert dogs.filter(pl.col("reply_to_chat_id").is_not_null())["reply_to_message_id"].null_count() == 0


def test_media_forwards_bots_and_service(telegram_dir: Path) -> None:
    saved = read_export(telegram_dir / "innerdvations/saved.json")
    assert saved["chat_name"].null_count() == saved.height  # Saved Messages have no name
    assert saved["via_bot"].drop_nulls().to_list() == ["@gif"]
    assert saved["forwarded"].sum() >= 1
    assert {"photo", "poll", "sticker", "animation", "voice_message", "video_file"} <= set(saved["media_type"].drop_nulls())
    salaf = read_export(telegram_dir / "uponthepathofsalaf/result.json")
    assert salaf["forwarded"].sum() == 27
    assert salaf.filter(pl.col("forwarded"))["forwarded_from_id"].null_count() == 0
    assert set(salaf.filter(pl.col("kind") == "service")["action"]) >= {"create_channel", "pin_message"}
    bitnada = read_export(telegram_dir / "bitnada/result-2021.json")
    assert bitnada.filter(pl.col("media_type") == "file").height == 2  # PDFs: a document has no media_type


def test_migrated_negative_ids(telegram_dir: Path) -> None:
    frame = read_export(telegram_dir / "innerdvations/public_supergroup.json")
    assert (frame["message_id"] < 0).any()


def test_full_account_layout_and_duplicate_chats(telegram_dir: Path, tmp_path: Path) -> None:
    report = ingest.run(IngestConfig(inputs=[str(telegram_dir / "akarsh1995")], output=str(tmp_path / "m.parquet")))
    assert report["rows"] == 6 and report["duplicate_rows_dropped"] == 6  # both chats share chat and message ids
    assert set(report) == set(ingest.IngestReport.__annotations__)  # the typed result is what it says
    assert report["rows_by_kind"] == {"message": 5, "service": 1, "unsupported": 0}


def test_folder_of_every_real_export(telegram_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "all.parquet"
    report = ingest.run(IngestConfig(inputs=[str(telegram_dir)], output=str(out)))
    assert report["files_read"] == len(REAL_FILES) and report["chats"] == 12
    frame = pl.read_parquet(out)
    assert frame.height == report["rows"] == 8411 + 1997 - 6
    assert report["rows_dropped"] == {"unknown_type": 0, "unreadable_date": 0} and report["edit_dates_cleared"] == 0
    assert frame.select(pl.struct("chat_id", "message_id").is_unique().all()).item()
    assert Path(str(out) + ".config.yaml").is_file()
    assert json.loads((tmp_path / "all_ingest.json").read_text())["rows"] == frame.height


@pytest.mark.parametrize("chats", [1, 4])
def test_synthetic_export_matches_its_truth(synth_tool: Path, tmp_path: Path, chats: int) -> None:
    path, truth = synth_export(synth_tool, tmp_path / "synth.json", 30_000, chats=chats, seed=chats)
    frame = read_export(path)
    messages = frame.filter(pl.col("kind") == "message")
    assert frame.height == 30_000
    assert messages.height == truth["messages"]
    assert frame.filter(pl.col("kind") == "service").height == truth["service"]
    assert frame["chat_id"].n_unique() == truth["chats"]
    assert messages["forwarded"].sum() == truth["forwarded"]
    assert messages["via_bot"].drop_nulls().len() == truth["via_bot"]
    assert (messages["sender_id"].str.starts_with("user9")).sum() == truth["bot_sender"]
    assert messages["sender"].null_count() == truth["deleted_sender"]
    assert messages["reply_to_message_id"].drop_nulls().len() == truth["reply_in_chat"] + truth["reply_dangling"]
    assert messages["media_type"].drop_nulls().len() == truth["media"]
    assert messages.filter(pl.col("media_type").is_not_null() & (pl.col("text") == "")).height == truth["media_only"]


def test_sliced_decoding_equals_whole_decoding(synth_tool: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(bulk, "BULK_MIN_BYTES", 1 << 40)
    path, _ = synth_export(synth_tool, tmp_path / "s.json", 5_000, seed=3)
    whole = read_export(path)
    monkeypatch.setattr(telegram, "SLICE_BYTES", 50_000)
    sliced = read_export(path)
    assert sliced.equals(whole)


@pytest.fixture
def bulk_calls(monkeypatch) -> list[str]:
    """Send every chat to the bulk reader, in small spans; records each chat it read (or 'refused: why')."""
    calls: list[str] = []
    read_messages = bulk.read_messages

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        try:
            result = read_messages(*args, **kwargs)
        except bulk.BulkUnsupported as exc:
            calls.append(f"refused: {exc}")
            raise
        calls.append("read")
        return result

    monkeypatch.setattr(bulk, "read_messages", recording)
    monkeypatch.setattr(bulk, "BULK_MIN_BYTES", 0)
    monkeypatch.setattr(bulk, "MIN_SPAN_BYTES", 2_000)
    monkeypatch.setattr(bulk, "CHECK_BYTES", 500)  # the check cuts the spans into pieces of a few messages
    return calls


def _exact(path: Path, monkeypatch) -> pl.DataFrame:
    with monkeypatch.context() as patch:
        patch.setattr(bulk, "BULK_MIN_BYTES", 1 << 40)
        return read_export(path)


@pytest.mark.parametrize("name", REAL_FILES)
def test_bulk_reader_equals_the_exact_decoder_on_real_exports(telegram_dir: Path, name: str, bulk_calls: list[str],
                                                              monkeypatch) -> None:
    path = telegram_dir / name
    assert read_export(path).equals(_exact(path, monkeypatch))
    assert bulk_calls and set(bulk_calls) == {"read"}, bulk_calls


@pytest.mark.parametrize("chats", [1, 3])
def test_bulk_reader_equals_the_exact_decoder_on_synthetic_exports(synth_tool: Path, tmp_path: Path, chats: int,
                                                                   bulk_calls: list[str], monkeypatch) -> None:
    path, truth = synth_export(synth_tool, tmp_path / "s.json", 20_000, chats=chats, seed=11)
    frame = read_export(path)
    assert bulk_calls == ["read"] * chats
    assert frame.equals(_exact(path, monkeypatch))
    assert frame.filter(pl.col("kind") == "message")["forwarded"].sum() == truth["forwarded"]


@pytest.mark.parametrize("unsupported", [["copy_file_range"], ["copy_file_range", "sendfile"]])
def test_bulk_reader_copies_spans_across_file_systems(tmp_path: Path, bulk_calls: list[str], monkeypatch,
                                                      unsupported: list[str]) -> None:
    """A scratch folder on another file system than the export (a tmpfs /tmp) refuses copy_file_range (EXDEV)."""
    path = write_chat(tmp_path / "c.json", [msg(i, f"hello {i}") for i in range(1, 400)])
    used: list[str] = []

    def cross_device(name: str):  # noqa: ANN202
        def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            used.append(name)
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return refuse

    for name in unsupported:
        monkeypatch.setattr(os, name, cross_device(name))
    frame = read_export(path)
    assert bulk_calls == ["read"] and set(used) == set(unsupported)
    assert frame.equals(_exact(path, monkeypatch)) and frame.height == 399


def test_a_message_over_duckdbs_limit_sends_the_chat_to_the_exact_decoder(tmp_path: Path, bulk_calls: list[str],
                                                                           monkeypatch) -> None:
    long_text = "long " * (2 * bulk.LARGEST_MESSAGE_BYTES // 5 + 1)  # DuckDB reads up to twice its limit
    messages = [msg(i, f"hello {i}") for i in range(1, 400)]
    messages[200]["text"] = long_text
    path = write_chat(tmp_path / "long.json", messages)
    frame = read_export(path)
    assert len(bulk_calls) == 1 and "maximum_object_size" in bulk_calls[0], bulk_calls
    assert frame.equals(_exact(path, monkeypatch)) and frame["text"][200] == long_text


def test_bulk_reader_sees_forwards_from_deleted_accounts(tmp_path: Path, bulk_calls: list[str],
                                                         monkeypatch) -> None:
    """DuckDB reads a key written as null like a missing key; the exact decoder's check restores the difference."""
    messages = [msg(i, f"hello {i}") for i in range(1, 400)]
    messages[10]["forwarded_from"] = None
    messages[20]["saved_from"] = None
    messages[30]["forwarded_from"] = "Somebody"
    messages[40]["reply_to_peer_id"] = None  # nulls that mean nothing
    messages[45]["photo"] = None
    messages[46].update(poll=None, text="")
    messages[47].update(photo="photos/p.jpg", poll={"question": "?"})
    messages[48].update(poll={"question": "?"}, text="")
    messages[50]["text"] = ["a ", {"type": "bold", "text": "forwarded_from\": null"}, {"type": "link"}]
    path = write_chat(tmp_path / "f.json", messages)
    frame = read_export(path)
    assert bulk_calls == ["read"]
    assert frame.equals(_exact(path, monkeypatch))
    assert frame.filter(pl.col("forwarded"))["message_id"].to_list() == [11, 21, 31]
    assert frame["forwarded_from"].drop_nulls().to_list() == ["Somebody"]
    assert frame["media_type"][45:49].to_list() == [None, None, "photo", "poll"]
    assert frame["text"][50] == 'a forwarded_from": null'


def test_bulk_reader_reads_text_when_some_message_lacks_text_entities(tmp_path: Path, bulk_calls: list[str],
                                                                      monkeypatch) -> None:
    messages = [msg(i, f"hello {i}", text_entities=[{"type": "plain", "text": f"hello {i}"}]) for i in range(1, 300)]
    messages[7]["text"] = ["bold ", {"type": "bold", "text": "move"}]
    del messages[7]["text_entities"]
    path = write_chat(tmp_path / "e.json", messages)
    frame = read_export(path)
    assert bulk_calls == ["read"]
    assert frame["text"][7] == "bold move" and frame["text"][8] == "hello 9"
    assert frame.equals(_exact(path, monkeypatch))


def test_locating_the_messages_of_a_single_chat_export(tmp_path: Path, synth_tool: Path) -> None:
    chat = write_chat(tmp_path / "c.json", [msg(1, "hi"), msg(2, "there")], chat_id=77, name="Group")
    with bulk.mapped_file(chat) as source:
        found, begin, end = bulk.locate_single_chat(str(chat), source)
        assert (found.id, found.name) == (77, "Group")
        assert json.loads(bytes(source.buffer[begin:end]))[1]["text"] == "there"
    minified = tmp_path / "m.json"
    minified.write_text(json.dumps({"name": "g", "id": 1, "messages": [msg(1, "hi")]}))
    truncated = tmp_path / "t.json"
    truncated.write_text(chat.read_text()[:-40])
    last_key = tmp_path / "k.json"
    last_key.write_text(json.dumps({"name": "g", "messages": [msg(1, "hi")], "id": 1}, indent=1))
    account, _ = synth_export(synth_tool, tmp_path / "a.json", 200, chats=2)
    for path in (minified, truncated, last_key, account):
        with bulk.mapped_file(path) as source:
            assert bulk.locate_single_chat(str(path), source) is None, path.name
    # Such files still read, through the whole-file decoder.
    assert read_export(last_key)["text"].to_list() == ["hi"]


def test_bulk_reader_hands_quirky_chats_to_the_exact_decoder(tmp_path: Path, bulk_calls: list[str],
                                                              monkeypatch) -> None:
    """Repeated keys and \\xHH escapes are refused by DuckDB: those chats are read by msgspec, with the same result."""
    messages = [msg(i, f"hello {i}") for i in range(1, 300)]
    messages[5]["text"] = "tab\u000bhere"
    path = write_chat(tmp_path / "q.json", messages)
    path.write_text(path.read_text().replace("\\u000b", "\\x0b").replace(
        '"id": 9,', '"id": 9, "text": "first of two",'))
    frame = read_export(path)
    assert any(call.startswith("refused") for call in bulk_calls)
    assert frame.equals(_exact(path, monkeypatch))
    assert frame["text"][5] == "tab\x0bhere" and frame["text"][8] == "hello 9"


def test_minified_export_is_read_in_one_piece(tmp_path: Path, monkeypatch) -> None:
    messages = [msg(i, f"hello {i}") for i in range(1, 200)]
    path = tmp_path / "min.json"
    path.write_text(json.dumps({"name": "g", "type": "private_group", "id": 5, "messages": messages},
                               separators=(",", ":")))
    monkeypatch.setattr(telegram, "SLICE_BYTES", 100)
    frame = read_export(path)
    assert frame["text"].to_list() == [f"hello {i}" for i in range(1, 200)]


def test_control_character_escapes_and_repeated_keys(tmp_path: Path) -> None:
    path = tmp_path / "quirks.json"
    body = json.dumps({"name": "q", "type": "private_group", "id": 7, "messages": [
        msg(1, "tab\u000bhere"), msg(2, "a literal \\x41 stays"), service(3, "send_webview_data")]}, indent=1)
    body = body.replace("\\u000b", "\\x0b")  # what Telegram Desktop writes for a vertical tab
    body = body.replace('"action": "send_webview_data",', '"action": "send_webview_data", "text": "data",')
    path.write_text(body)
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)
    frame = read_export(path)
    assert frame["text"].to_list() == ["tab\x0bhere", "a literal \\x41 stays", ""]


def test_overlapping_exports_keep_the_latest_edit(tmp_path: Path) -> None:
    old = [msg(1, "first"), msg(2, "typo"), msg(3, "third")]
    new = [msg(2, "fixed", edited="2023-11-15T10:00:00", edited_unixtime="1700042400"), msg(3, "third"),
           msg(4, "fourth")]
    write_chat(tmp_path / "in" / "a_old.json", old)
    write_chat(tmp_path / "in" / "b_new.json", new)
    report = ingest.run(IngestConfig(inputs=[str(tmp_path / "in")], output=str(tmp_path / "m.parquet")))
    frame = pl.read_parquet(tmp_path / "m.parquet")
    assert frame["text"].to_list() == ["first", "fixed", "third", "fourth"]
    assert report["duplicate_rows_dropped"] == 2
    # The order of the files does not matter: the edit wins either way.
    report = ingest.run(IngestConfig(inputs=[str(tmp_path / "in" / "b_new.json"), str(tmp_path / "in" / "a_old.json")],
                                     output=str(tmp_path / "m2.parquet")))
    assert pl.read_parquet(tmp_path / "m2.parquet")["text"].to_list() == ["first", "fixed", "third", "fourth"]


def test_unsupported_entries_are_rows(tmp_path: Path) -> None:
    path = write_chat(tmp_path / "u.json", [msg(1, "hi"), {"id": 2, "type": "unsupported"}])
    frame = read_export(path)
    assert frame["kind"].to_list() == ["message", "unsupported"]
    assert frame["text"].to_list() == ["hi", ""]
    assert frame["date"][1] is None


BAD_INPUTS = {
    "truncated": (lambda p: p.write_text(json.dumps({"name": "x", "type": "private_group", "id": 1,
                                                     "messages": [msg(1, "a")]}, indent=1)[:-30]), "truncated"),
    "html": (lambda p: p.write_text("<!DOCTYPE html>\n<html><head></head><body>messages</body></html>"),
             "Machine-readable JSON"),
    "not an export": (lambda p: p.write_text(json.dumps({"foo": [1, 2]})), "not a Telegram Desktop export"),
    "array": (lambda p: p.write_text("[1, 2, 3]"), "not a Telegram Desktop export"),
    "bad field": (lambda p: p.write_text(json.dumps({"name": "x", "type": "t", "id": 1,
                                                     "messages": [{"id": "one"}]})), "$.messages[0].id"),
    "latin-1": (lambda p: p.write_bytes(json.dumps({"name": "x", "type": "t", "id": 1, "messages": [msg(1, "é")]},
                                                   ensure_ascii=False).encode("latin-1")), "not valid UTF-8"),
    "utf-16": (lambda p: p.write_bytes(json.dumps({"id": 1, "messages": []}).encode("utf-16")), "UTF-16"),
    "empty": (lambda p: p.write_text(""), "empty"),
    "not json": (lambda p: p.write_text("hello: world"), "not valid JSON"),
}


@pytest.mark.parametrize("bulk_reader", [False, True], ids=["exact", "bulk"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_names_the_file_and_the_problem(tmp_path: Path, case: str, bulk_reader: bool, monkeypatch) -> None:
    if bulk_reader:
        monkeypatch.setattr(bulk, "BULK_MIN_BYTES", 0)
    write, expected = BAD_INPUTS[case]
    path = tmp_path / "bad.json"
    write(path)
    with pytest.raises(ExportFormatError) as raised:
        read_export(path)
    message = str(raised.value)
    assert str(path) in message and expected in message
    assert "\n" not in message


def test_missing_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no such file"):
        ingest.run(IngestConfig(inputs=[str(tmp_path / "nope.json")], output=str(tmp_path / "o.parquet")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="no export files"):
        ingest.run(IngestConfig(inputs=[str(tmp_path / "empty")], output=str(tmp_path / "o.parquet")))


def test_skip_invalid_lists_bad_files(tmp_path: Path) -> None:
    write_chat(tmp_path / "in" / "good.json", [msg(1, "hi")])
    (tmp_path / "in" / "bad.json").write_text("<html></html>")
    out = tmp_path / "m.parquet"
    with pytest.raises(ExportFormatError):
        ingest.run(IngestConfig(inputs=[str(tmp_path / "in")], output=str(out)))
    assert not out.exists() and not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))
    report = ingest.run(IngestConfig(inputs=[str(tmp_path / "in")], output=str(out), skip_invalid=True))
    assert report["files_read"] == 1 and report["files_skipped"] == 1
    assert report["skipped"][0]["file"].endswith("bad.json") and "HTML" in report["skipped"][0]["error"]
    assert pl.read_parquet(out).height == 1


def test_readers_are_chosen_by_content(tmp_path: Path, telegram_dir: Path) -> None:
    from cookiebaker.ingest.readers import reader_for
    from cookiebaker.ingest.telegram import TelegramReader

    reader = TelegramReader()
    for name in REAL_FILES:  # every real export, single-chat and full-account, is recognised by its content
        head = (telegram_dir / name).read_bytes()[:4096]
        assert reader.detect(head, telegram_dir / name), name
    disguised = tmp_path / "export.txt"  # the name does not matter
    disguised.write_bytes((telegram_dir / "tg2md" / "result.json").read_bytes())
    assert reader_for(disguised).name == "telegram" and read_export(disguised).height > 0
    for content in (b'{"rows": []}', b"<!DOCTYPE html><html>", b"[1, 2, 3]", b"\xef\xbb\xbf" + b'{"foo": 1}'):
        assert not reader.detect(content, tmp_path / "x.json"), content
    other = tmp_path / "other.json"
    other.write_bytes(b'{"rows": []}')
    with pytest.raises(InputFileError, match="other.json"):  # no reader claims it: the first one says why
        read_export(other)


def test_invalid_utf8_names_its_byte_and_symlink_loops_say_so(tmp_path: Path) -> None:
    path = write_chat(tmp_path / "chat.json", [msg(1, "x" * 400)])
    data = bytearray(path.read_bytes())
    data[317] = 0xFF  # inside the message text
    path.write_bytes(bytes(data))
    with pytest.raises(ExportFormatError, match=r"not valid UTF-8 \(byte 317\)"):
        read_export(path)
    (tmp_path / "a.json").symlink_to(tmp_path / "b.json")
    (tmp_path / "b.json").symlink_to(tmp_path / "a.json")
    with pytest.raises(InputFileError, match="loop of symbolic links"):
        ingest.run(IngestConfig(inputs=[str(tmp_path / "a.json")], output=str(tmp_path / "m.parquet")))
    (tmp_path / "gone.json").symlink_to(tmp_path / "nothing.json")
    with pytest.raises(InputFileError, match="symbolic link to something that does not exist"):
        ingest.run(IngestConfig(inputs=[str(tmp_path / "gone.json")], output=str(tmp_path / "m.parquet")))


class _RaisingDecoder:
    """A stand-in for msgspec's decoder that raises what a given msgspec version raises for invalid UTF-8."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def decode(self, data: object) -> None:
        raise self.exc


# msgspec up to 0.22 raised Python's UnicodeDecodeError for invalid UTF-8 (at an offset inside the string it was
# decoding); 0.23 raises its own DecodeError with no offset. The verdict must not depend on which.
UTF8_FAULTS = {
    "msgspec<=0.22": UnicodeDecodeError("utf-8", b"\xff", 5, 6, "invalid start byte"),
    "msgspec>=0.23": __import__("msgspec").DecodeError("Invalid UTF-8 encoded string"),
}


@pytest.mark.parametrize("decoder", ["_DECODER", "_MESSAGES_DECODER"])
@pytest.mark.parametrize("fault", list(UTF8_FAULTS))
def test_invalid_utf8_verdict_is_the_same_for_every_msgspec(tmp_path: Path, monkeypatch, fault: str,
                                                            decoder: str) -> None:
    from cookiebaker.ingest.telegram import decode

    path = write_chat(tmp_path / "chat.json", [msg(1, "x" * 400)])
    data = bytearray(path.read_bytes())
    data[317] = 0xFF
    path.write_bytes(bytes(data))
    monkeypatch.setattr(decode, decoder, _RaisingDecoder(UTF8_FAULTS[fault]))
    if decoder == "_MESSAGES_DECODER":  # the file decodes; its messages array does not
        monkeypatch.setattr(decode, "_DECODER", __import__("msgspec").json.Decoder(decode.ExportRoot))
        data[317] = ord("x")
        data[300] = 0xFF  # still inside the text: 300 - the array's start is the offset within the array
        path.write_bytes(bytes(data))
    with pytest.raises(ExportFormatError) as raised:
        read_export(path)
    expected_byte = 317 if decoder == "_DECODER" else 300
    assert str(raised.value).endswith(f"not valid UTF-8 (byte {expected_byte}); Telegram Desktop writes UTF-8 JSON")


def test_msgspec_still_says_what_the_reader_reads() -> None:
    """Where msgspec has no exception type for a fault, the reader reads its message: the installed msgspec must
    still say it (a new msgspec that words it differently fails here, not in a user's error message)."""
    import msgspec

    from cookiebaker.ingest.telegram import decode

    def message(data: bytes) -> str:
        with pytest.raises(msgspec.DecodeError) as raised:
            msgspec.json.decode(data, type=decode.ExportRoot)
        return str(raised.value)

    assert decode.MSGSPEC_TRUNCATED in message(b'{"name": "x", "messages": [')
    assert message(b'{"name": x}').startswith(decode.MSGSPEC_MALFORMED_PREFIX)
    assert issubclass(msgspec.ValidationError, msgspec.DecodeError)
    with pytest.raises(msgspec.ValidationError, match=r"at `\$\[1\]\.id`$"):  # decode_messages names $.messages[1]
        msgspec.json.decode(b'[{"id": 1}, {"id": "one"}]', type=list[decode.Message])


# ---- Hostile and malformed exports (issue 13, items 6-8): one verdict, whichever reader reads the chat ----

def _nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


#: name → (what to do to message 150 of 300, as raw JSON text, expected words of the refusal or None)
MALFORMED = {
    "message id over 64 bits": (lambda m: m.replace('"id": 150,', f'"id": {2**70},'), "$.messages[149].id"),
    "reply id over 64 bits": (lambda m: m.replace('"id": 150,', f'"id": 150, "reply_to_message_id": {2**64},'),
                              "reply_to_message_id"),
    "peer over 64 bits": (lambda m: m.replace('"from_id": "user1"', f'"from_id": {2**70}'), "from_id"),
    "deep unknown key": (lambda m: m.replace('"id": 150,', f'"id": 150, "zzz": {_nested(10_000)},'), "nests too deeply"),
    "deep text": (lambda m: m.replace('"text": "m150"', f'"text": {_nested(10_000)}'), "nests too deeply"),
    "deep photo": (lambda m: m.replace('"id": 150,', f'"id": 150, "photo": {_nested(10_000)},'), "nests too deeply"),
    "from_id an object": (lambda m: m.replace('"from_id": "user1"', '"from_id": {"a": 1}'), "from_id"),
    "from an array": (lambda m: m.replace('"from": "Alice"', '"from": ["x"]'), "from"),
    "text a number": (lambda m: m.replace('"text": "m150"', '"text": 42'), "$.messages[149].text"),
    "entity text a number": (lambda m: m.replace('"text": "m150"', '"text": [{"type": "bold", "text": 5}]'),
                             "text[0].text"),
    "text part a number": (lambda m: m.replace('"text": "m150"', '"text": ["a", 7]'), "text"),
    "date a number": (lambda m: m.replace('"date_unixtime": "1700000150"', '"date_unixtime": 1700000150'),
                      "date_unixtime"),
    "id a float": (lambda m: m.replace('"id": 150,', '"id": 150.5,'), "$.messages[149].id"),
    "type an object": (lambda m: m.replace('"type": "message"', '"type": {}', 1), "type"),
    # Texts the exact decoder refuses and DuckDB alone would read (to it a null text is no text at all)
    "text null": (lambda m: m.replace('"text": "m150"', '"text": null'), "$.messages[149].text"),
    "text an object": (lambda m: m.replace('"text": "m150"', '"text": {"text": "a"}'), "$.messages[149].text"),
    "text part null": (lambda m: m.replace('"text": "m150"', '"text": ["a", null]'), "text[1]"),
    "text part a list": (lambda m: m.replace('"text": "m150"', '"text": ["a", ["b"]]'), "text[1]"),
    "entity text null": (lambda m: m.replace('"text": "m150"', '"text": [{"type": "bold", "text": null}]'),
                         "text[0].text"),
    "entity text twice": (lambda m: m.replace('"text": "m150"', '"text": [{"type": "bold", "text": "a", "text": 5}]'),
                          "text[0].text"),
    "text a lone surrogate": (lambda m: m.replace('"text": "m150"', '"text": "\\ud800"'), "not valid JSON"),
    # Separators, where the sliced readers cut the array
    "comma doubled": (lambda m: m.replace("\n  },", "\n  },,"), "not valid JSON"),
    "comma missing": (lambda m: m.replace("\n  },", "\n  }"), "not valid JSON"),
}


def _export_with(tmp_path: Path, change, *, chat_id: int = 1234) -> Path:  # noqa: ANN001
    messages = [msg(i, f"m{i}", date=1_700_000_000 + i) for i in range(1, 301)]
    path = write_chat(tmp_path / "chat.json", messages, chat_id=chat_id)
    text = path.read_text()
    start = text.index('"id": 150,')
    end = text.index('"id": 151,')
    path.write_text(text[:start] + change(text[start:end]) + text[end:])
    return path


def _verdict(path: Path) -> str:
    try:
        frame = read_export(path)
    except ExportFormatError as exc:
        return f"refused: {exc}"
    return f"read {frame.height} rows"


def _three_verdicts(path: Path, monkeypatch) -> tuple[str, str, str]:
    """The verdicts of the exact decoder on the whole array, of the msgspec slice reader (a slice per message) and
    of whatever the bulk reader hands the file to (the bulk reader itself only when some fixture lets it in)."""
    with monkeypatch.context() as patch:
        patch.setattr(bulk, "BULK_MIN_BYTES", 1 << 40)
        exact = _verdict(path)
        patch.setattr(telegram, "SLICE_BYTES", 100)
        sliced = _verdict(path)
    return exact, sliced, _verdict(path)


@pytest.mark.parametrize("case", list(MALFORMED))
def test_both_readers_refuse_malformed_messages_naming_the_file_and_place(tmp_path: Path, case: str,
                                                                         bulk_calls: list[str], monkeypatch) -> None:
    change, expected = MALFORMED[case]
    path = _export_with(tmp_path, change)
    exact, sliced, through_bulk = _three_verdicts(path, monkeypatch)
    assert len(bulk_calls) == 1 and bulk_calls[0].startswith("refused"), bulk_calls  # DuckDB alone would read it
    assert exact == through_bulk == sliced
    assert exact.startswith("refused") and str(path) in exact and expected in exact and "\n" not in exact, exact


def test_a_comma_after_the_last_message_is_refused_by_every_reader(tmp_path: Path, bulk_calls: list[str],
                                                                  monkeypatch) -> None:
    path = _export_with(tmp_path, lambda m: m)
    text = path.read_text()
    assert text.count("\n  }\n ]") == 1
    path.write_text(text.replace("\n  }\n ]", "\n  },\n ]"))
    exact, sliced, through_bulk = _three_verdicts(path, monkeypatch)
    assert exact == sliced == through_bulk
    assert exact.startswith("refused") and "not valid JSON" in exact, exact


def test_chat_id_over_64_bits_is_refused_by_both_readers(tmp_path: Path, monkeypatch) -> None:
    path = _export_with(tmp_path, lambda m: m, chat_id=2**80)
    with monkeypatch.context() as patch:
        patch.setattr(bulk, "BULK_MIN_BYTES", 1 << 40)
        exact = _verdict(path)
    with monkeypatch.context() as patch:
        patch.setattr(bulk, "BULK_MIN_BYTES", 0)
        assert _verdict(path) == exact
    assert exact.startswith("refused") and "$.id" in exact


def test_skip_invalid_skips_every_malformed_file_and_the_cli_says_one_line(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    write_chat(inputs / "good.json", [msg(1, "hi")])
    for index, (change, _) in enumerate(MALFORMED.values()):
        _export_with(tmp_path, change).rename(inputs / f"bad{index:02d}.json")
    report = ingest.run(IngestConfig(inputs=[str(inputs)], output=str(tmp_path / "m.parquet"), skip_invalid=True))
    assert report["files_read"] == 1 and report["files_skipped"] == len(MALFORMED)
    assert {Path(item["file"]).name for item in report["skipped"]} == {f"bad{i:02d}.json" for i in range(len(MALFORMED))}
    result = run_cli("ingest", str(inputs / "bad03.json"), "-o", str(tmp_path / "x.parquet"))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "bad03.json" in result.stderr and "nests too deeply" in result.stderr


def _dates(local: str, unix: str) -> object:
    return lambda m: m.replace('"date": "2023-11-14T22:13:20"', f'"date": {local}').replace(
        '"date_unixtime": "1700000150"', f'"date_unixtime": {unix}')


BAD_VALUES = {  # message 150's change → the reason it is counted under
    "date not a date": (_dates('"not-a-date"', "null"), "unreadable_date"),
    "date_unixtime in year -1199": (_dates('"2023-11-14T22:13:20"', '"-99999999999"'), "unreadable_date"),
    "date_unixtime in year 5138": (_dates('"2023-11-14T22:13:20"', '"99999999999"'), "unreadable_date"),
    "no date at all": (_dates("null", "null"), "unreadable_date"),
    "type hologram": (lambda m: m.replace('"type": "message"', '"type": "hologram"', 1), "unknown_type"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_values_are_left_out_and_counted_the_same_by_both_readers(tmp_path: Path, case: str,
                                                                      bulk_calls: list[str], monkeypatch) -> None:
    change, reason = BAD_VALUES[case]
    path = _export_with(tmp_path, change)
    reports = []
    for minimum in (1 << 40, 0):
        monkeypatch.setattr(bulk, "BULK_MIN_BYTES", minimum)
        out = tmp_path / f"m{minimum}.parquet"
        reports.append(ingest.run(IngestConfig(inputs=[str(path)], output=str(out))))
        frame = pl.read_parquet(out)
        assert frame.height == 299 and 150 not in frame["message_id"].to_list()
        assert frame["date"].null_count() == 0 and set(frame["kind"]) == {"message"}
    assert bulk_calls == ["read"]
    assert reports[0]["rows_dropped"] == reports[1]["rows_dropped"] == {
        "unknown_type": int(reason == "unknown_type"), "unreadable_date": int(reason == "unreadable_date")}


def test_unreadable_edit_dates_read_as_not_edited(tmp_path: Path) -> None:
    path = _export_with(tmp_path, lambda m: m.replace('"id": 150,', '"id": 150, "edited": "x", '
                                                      '"edited_unixtime": "99999999999",'))
    report = ingest.run(IngestConfig(inputs=[str(path)], output=str(tmp_path / "m.parquet")))
    assert report["edit_dates_cleared"] == 1 and report["rows"] == 300
    assert pl.read_parquet(tmp_path / "m.parquet")["edited"].null_count() == 300


QUIRKY_VALUES = {  # found by tests/test_fuzz.py: values DuckDB reads as text, which once read differently
    "peer as digits over 32 bits": lambda m: m.replace('"from_id": "user1"', '"from_id": "99999999999"'),
    "negative peer": lambda m: m.replace('"from_id": "user1"', '"from_id": -5'),
    "unixtime in hex": lambda m: m.replace('"1700000150"', '"0x10"'),
    "unixtime with spaces": lambda m: m.replace('"1700000150"', '" 1700000150 "'),
    "unixtime with underscores": lambda m: m.replace('"1700000150"', '"1_700_000_150"'),
    "unixtime over 64 bits": lambda m: m.replace('"1700000150"', '"99999999999999999999"'),
    "unixtime that overflows in microseconds": lambda m: m.replace('"1700000150"', '"9223372036854775807"'),
}


@pytest.mark.parametrize("case", list(QUIRKY_VALUES))
def test_quirky_values_read_the_same_by_both_readers(tmp_path: Path, case: str, bulk_calls: list[str],
                                                     monkeypatch) -> None:
    path = _export_with(tmp_path, QUIRKY_VALUES[case])
    through_bulk = read_export(path)
    assert bulk_calls == ["read"]
    assert through_bulk.equals(_exact(path, monkeypatch))
    row = through_bulk.filter(pl.col("message_id") == 150).row(0, named=True)
    if "unixtime" in case:  # not a usable unixtime: the local date is read instead
        assert row["date"].isoformat() == "2023-11-14T22:13:20+00:00"
