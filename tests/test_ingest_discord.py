"""DiscordChatExporter JSON → the messages table, and through pairs."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import discord_fixtures as fx
import polars as pl
import pytest

from cookiebaker import ingest, pairs
from cookiebaker.errors import ExportFormatError
from cookiebaker.ingest import read_export
from cookiebaker.messages import MESSAGE_SCHEMA


def test_every_field_the_reader_uses(tmp_path: Path) -> None:
    frame = read_export(fx.write(tmp_path / "general.json"))
    assert frame.schema == MESSAGE_SCHEMA and frame.height == len(fx.messages())
    rows = {row["message_id"]: row for row in frame.iter_rows(named=True)}
    first = rows[1100000000000000001]
    assert (first["source"], first["chat_id"], first["chat_name"], first["chat_type"]) == (
        "discord", int(fx.CHANNEL), "Pizza Club / general", "GuildTextChat")
    assert (first["sender"], first["sender_id"], first["sender_is_bot"], first["kind"]) == (
        "Ann", "discord:1001", False, "message")
    assert first["date"] == datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc)  # +01:00 read as UTC
    assert rows[1100000000000000002]["sender"] == "benny"  # no nickname: the name
    assert rows[1100000000000000002]["reply_to_message_id"] == 1100000000000000001
    assert rows[1100000000000000004]["edited"] == datetime(2024, 3, 1, 9, 4, tzinfo=timezone.utc)
    assert rows[1100000000000000006]["forwarded"] and rows[1100000000000000006]["reply_to_message_id"] is None
    assert rows[1100000000000000007]["sender_is_bot"]
    assert rows[1100000000000000008]["media_type"] == "photo" and rows[1100000000000000009]["media_type"] == "sticker"
    assert rows[1100000000000000010]["media_type"] is None  # a link preview is no media: the text has the link
    services = {row["message_id"]: row["action"] for row in rows.values() if row["kind"] == "service"}
    assert services == {1100000000000000011: "channel_pinned_message", 1100000000000000012: "guild_member_join",
                        1100000000000000013: "thread_created", 1100000000000000014: "call",
                        1100000000000000015: "recipient_add", 1100000000000000016: "channel_name_change",
                        1100000000000000017: "channel_icon_change", 1100000000000000018: "24"}
    assert all(rows[i]["text"] == "" for i in services)  # a system notification's text is no one's words
    old = rows[1100000000000000019]  # an older export: no stickers, roles or reference.type
    assert old["reply_to_message_id"] == 1100000000000000008 and old["text"] == "old export, @Ann"
    elsewhere = rows[1100000000000000020]
    assert elsewhere["reply_to_chat_id"] == int(fx.OTHER_CHANNEL)


def test_pairs_from_a_discord_channel(tmp_path: Path) -> None:
    fx.write(tmp_path / "in" / "general.json")
    ingest.run(ingest.IngestConfig(inputs=[str(tmp_path / "in")], output=str(tmp_path / "m.parquet")))
    report = pairs.run(pairs.PairsConfig(input=str(tmp_path / "m.parquet"), output=str(tmp_path / "qa.parquet")))
    qa = pl.read_parquet(tmp_path / "qa.parquet")
    assert qa.select("query", "response").rows() == [("anyone up for pizza tonight?", "me! where?\nand when?"),
                                                     ("me! where?", "at mine, 8")]
    dropped = report["dropped"]
    assert dropped["target_not_in_export"] == 1  # the parent is not in the export
    assert dropped["response_from_bot"] == 1  # isBot, whatever its name
    assert dropped["reply_into_other_chat"] == 1
    assert dropped["query_empty"] == 1  # the reply to the photo
    assert report["implicit_reply_candidates"] == 0  # the channel has reply links


def test_detected_by_content_and_bad_files_are_one_line(tmp_path: Path) -> None:
    renamed = fx.write(tmp_path / "export.json.bak")
    assert read_export(renamed)["source"][0] == "discord"
    data = fx.export()
    data["messages"][3]["id"] = 12
    with pytest.raises(ExportFormatError) as raised:
        read_export(fx.write(tmp_path / "bad.json", data))
    assert "DiscordChatExporter" in str(raised.value) and "$.messages[3].id" in str(raised.value)
    cut = tmp_path / "cut.json"
    cut.write_text(json.dumps(fx.export())[:-200])
    with pytest.raises(ExportFormatError, match="cut.json: the file is not valid JSON"):
        read_export(cut)
    report = ingest.run(ingest.IngestConfig(inputs=[str(tmp_path / "bad.json"), str(renamed)],
                                            output=str(tmp_path / "m.parquet"), skip_invalid=True))
    assert report["files_by_source"]["discord"] == 1 and report["files_skipped"] == 1
