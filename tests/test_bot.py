"""cookiebaker bot: the real python-telegram-bot against a local stand-in of the Bot API (tests/bot_api.py), and
the real `cookiebaker serve` on the tiny GGUF, in a three-person group."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from bot_api import BOT, TOKEN, BotAPI, group, person, private
from conftest import serve_in_thread

from cookiebaker.bot import BotConfig
from cookiebaker.bot.policy import Incoming, answer_at, command_of, mentions, reason_to_answer, skipped, split_message
from cookiebaker.serve import ServeConfig, build_app

KEY = "bot-test-key"
ANN, BOB, CAT, ZED, DAN = (person(101, "Ann", "Lee"), person(102, "Bob"), person(103, "Cat"), person(104, "Zed"),
                           person(105, "Dan"))
GROUP = group()
MENTION = f"@{BOT['username']}"


def message(text: str, **fields: object) -> Incoming:
    values = {"chat_id": -1, "private": False, "message_id": 1, "sender_id": "user1", "sender_name": "Ann",
              "sender_is_bot": False, "text": text, **fields}
    return Incoming(**values)


def test_when_the_bot_answers() -> None:
    rng = random.Random(0)
    assert reason_to_answer(message("hi", private=True), [], 0, rng) == "private"
    assert reason_to_answer(message("hi", addressed=True), [], 0, rng) == "mention"
    assert reason_to_answer(message("hi", replies_to_bot=True), [], 0, rng) == "reply"
    assert reason_to_answer(message("any COOKIES left?"), ["cookies"], 0, rng) == "trigger"
    assert reason_to_answer(message("cookiesandcream"), ["cookies"], 0, rng) is None  # whole words only
    assert reason_to_answer(message("hi"), [], 0, rng) is None
    chances = [reason_to_answer(message("hi"), [], 0.25, random.Random(seed)) for seed in range(400)]
    assert 0.18 < chances.count("chance") / 400 < 0.32
    assert mentions(f"so {MENTION}, what now", BOT["username"]) and mentions("@COOKIE_TWIN_BOT", BOT["username"])
    assert not mentions(f"mail{MENTION}.com", BOT["username"]) and not mentions("@cookie_twin_bot2", BOT["username"])
    assert skipped(message("hi", sender_is_bot=True), set()) == "bot"
    assert skipped(message("hi", sender_id="user9"), {"user9"}) == "opted_out"
    assert skipped(message("  "), set()) == "no_text"
    assert command_of("/sfw off", "cookie_twin_bot").argument == "off"
    assert command_of(f"/forget@{BOT['username']}", "cookie_twin_bot").name == "forget"
    assert command_of("/forget@other_bot", "cookie_twin_bot") is None and command_of("hi /sfw", "x") is None
    # Debounce after the burst's last message; in a group, not before the cooldown since the last answer ends.
    assert answer_at(10, 10, None, 2, 30, private=False) == 12
    assert answer_at(10, 10, 5, 2, 30, private=False) == 35 and answer_at(10, 10, 5, 2, 30, private=True) == 12
    assert BotConfig(opt_out_sender_ids=[42, "user7"]).canonical_opt_out() == ["user42", "user7"]


def test_long_replies_are_split_where_they_break() -> None:
    words = " ".join(f"word{i}" for i in range(2000))
    parts = split_message(words)
    assert len(parts) == 5 and all(4000 < len(part) <= 4096 for part in parts[:-1])  # 16,889 characters
    assert " ".join(parts) == words  # nothing lost, cut between words
    assert split_message("x" * 5000) == ["x" * 4096, "x" * 904]  # no break: cut hard
    assert split_message("  short  ") == ["short"] and split_message("   ") == []


class Bot:
    """`cookiebaker bot` in its own process, as a user runs it."""

    def __init__(self, tmp: Path, api: BotAPI, service_port: int) -> None:
        self.params = tmp / "params.yaml"
        self.params.write_text(yaml.safe_dump({"bot": {
            "service_url": f"http://127.0.0.1:{service_port}", "base_url": api.base_url, "debounce_seconds": 0.6,
            "cooldown_seconds": 0, "state_db": str(tmp / "state.sqlite3"), "opt_out_sender_ids": [ZED["id"]],
            "retry_seconds": 0.2, "poll_timeout_seconds": 1, "service_timeout_seconds": 60}}))
        self.log = tmp / "bot.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "TELEGRAM_BOT_TOKEN": TOKEN, "COOKIEBAKER_API_KEY": KEY}
        self.process = subprocess.Popen([sys.executable, "-m", "cookiebaker", "bot", "--params", str(self.params)],
                                        env=env, stdout=subprocess.DEVNULL, stderr=self.log.open("a"))

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


def until(condition, seconds: float = 60, what: str = "") -> None:  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or condition}")


def generations(port: int, model: str) -> float:
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    line = next((line for line in metrics.splitlines()
                 if line.startswith(f'cookiebaker_generation_seconds_count{{model="{model}"}}')), None)
    return float(line.split()[-1]) if line else 0.0


@pytest.fixture()
def world(tiny_gguf: Path, tmp_path: Path, monkeypatch):  # noqa: ANN001, ANN201
    monkeypatch.setenv("COOKIEBAKER_API_KEY", KEY)
    config = ServeConfig(sfw_model=str(tiny_gguf), nsfw_model=str(tiny_gguf), history_db=str(tmp_path / "h.sqlite3"),
                         max_tokens=12, temperature=1.0)
    app = build_app(config)
    port, server = serve_in_thread(app)
    api = BotAPI(admins={ANN["id"]}).start()
    bot = Bot(tmp_path, api, port)
    bot.start()
    yield api, bot, app, port, server
    if bot.process.poll() is None:
        bot.process.kill()
    server.should_exit = True
    api.stop()


def history(app, chat_id: int) -> list[dict]:  # noqa: ANN001
    return app.state.service.store.recent("telegram", str(chat_id), 100)


def test_the_bot_in_a_three_person_group(world) -> None:  # noqa: ANN001
    api, bot, app, port, server = world
    chat = GROUP["id"]
    until(lambda: "getUpdates" in api.calls, what="the bot to poll")
    # Plain messages are stored with their speakers, not answered; the opted-out person's never are.
    api.say(GROUP, ANN, "pizza tonight?")
    api.say(GROUP, BOB, "sure, where?")
    api.say(GROUP, ZED, "my secret address is 5 Elm St")
    api.say(GROUP, CAT, "", photo=[{"file_id": "x", "file_unique_id": "y", "width": 1, "height": 1}])  # no text
    until(lambda: len(history(app, chat)) == 2, what="two stored turns")
    assert [(t["speaker"], t["content"]) for t in history(app, chat)] == [("Ann Lee", "pizza tonight?"),
                                                                          ("Bob", "sure, where?")]
    # A mention is answered by the chat's responder (SFW by default), as a reply to it, with the group as context.
    asked = api.say(GROUP, CAT, f"{MENTION} which place is best?")
    until(lambda: api.sent_to(chat), what="the answer")
    time.sleep(0.8)
    answer = api.sent_to(chat)
    assert len(answer) == 1 and answer[0]["reply_to"] == asked["message_id"]
    turns = history(app, chat)
    assert [t.get("speaker") for t in turns] == ["Ann Lee", "Bob", "Cat", None]
    assert turns[-1] == {"role": "assistant", "content": answer[0]["text"]}
    assert all("secret" not in t["content"] for t in turns)
    assert generations(port, "cookiebaker-sfw") == 1 and generations(port, "cookiebaker-nsfw") == 0
    assert any(action["action"] == "typing" for action in api.actions)

    # A burst is answered once: its last message, after the earlier ones are stored in order.
    api.say(GROUP, ANN, f"{MENTION} one")
    api.say(GROUP, BOB, "two")
    api.say(GROUP, ANN, "three")
    until(lambda: len(api.sent_to(chat)) == 2, what="the burst's answer")
    time.sleep(1.0)
    assert len(api.sent_to(chat)) == 2
    assert [t["content"] for t in history(app, chat)][-4:-1] == [f"{MENTION} one", "two", "three"]

    # /sfw: only an admin switches it; it survives a restart and picks the NSFW responder.
    api.say(GROUP, BOB, "/sfw off")
    until(lambda: len(api.sent_to(chat)) == 3)
    assert "admins" in api.sent_to(chat)[-1]["text"]
    api.say(GROUP, ANN, f"/sfw@{BOT['username']} off")
    until(lambda: len(api.sent_to(chat)) == 4)
    assert "NSFW now" in api.sent_to(chat)[-1]["text"]
    assert bot.stop() == 0  # SIGTERM: a clean stop
    bot.start()
    api.say(GROUP, CAT, f"{MENTION} still there?")
    until(lambda: len(api.sent_to(chat)) == 5, what="the answer after the restart")
    assert generations(port, "cookiebaker-nsfw") == 1 and generations(port, "cookiebaker-sfw") == 2

    # A 429 and a dropped connection on sendMessage are retried; a dropped getUpdates too.
    api.fail("getUpdates", "drop")
    api.fail("sendMessage", "429", "drop")
    api.say(private(DAN), DAN, "hello there")  # a private chat: always answered, no reply-to
    until(lambda: api.sent_to(DAN["id"]), seconds=60, what="the retried answer")
    assert api.sent_to(DAN["id"])[0]["reply_to"] is None
    assert api.calls.count("sendMessage") >= 7

    # Edits are not answered; /forget deletes the sender's turns (and the replies to them); /privacy says.
    api.say(GROUP, BOB, f"{MENTION} edited", edited=True)
    bobs = sum(1 for t in history(app, chat) if t.get("speaker") == "Bob")
    assert bobs == 2
    api.say(GROUP, BOB, "/forget")
    until(lambda: len(api.sent_to(chat)) == 6)
    assert api.sent_to(chat)[-1]["text"].startswith("Done: 2 of your messages")
    assert not any(t.get("speaker") == "Bob" for t in history(app, chat))
    api.say(GROUP, DAN, "/privacy")
    until(lambda: len(api.sent_to(chat)) == 7)
    assert "opt-out" in api.sent_to(chat)[-1]["text"]

    # The service down: no reply, a warning, no crash; it answers again once the service is back.
    server.should_exit = True
    time.sleep(0.5)
    api.say(GROUP, ANN, f"{MENTION} are you up?")
    time.sleep(3)
    assert len(api.sent_to(chat)) == 7 and bot.process.poll() is None
    assert bot.stop() == 0
    log = bot.log.read_text()
    assert "no reply: the service is not answering" in log
    assert TOKEN not in log and TOKEN.split(":")[1] not in log  # the token is never logged
    for text in ("pizza", "secret", "which place", "hello there"):  # nor chat text
        assert text not in log
    assert "opted_out 1" in log and "no_text 1" in log and "not_a_new_message 1" in log


def test_the_bot_says_what_is_wrong(tmp_path: Path) -> None:
    from conftest import run_cli

    env_without = {k: v for k, v in os.environ.items() if k != "TELEGRAM_BOT_TOKEN"}
    result = subprocess.run([sys.executable, "-m", "cookiebaker", "bot"], env=env_without, capture_output=True,
                            text=True, cwd=tmp_path)
    assert result.returncode == 1 and "set TELEGRAM_BOT_TOKEN" in result.stderr and "Traceback" not in result.stderr
    bad = run_cli("bot", "--reply-probability", "2", "--debounce-seconds", "-1", cwd=tmp_path)
    assert bad.returncode != 0 and "reply_probability" in bad.stderr and "debounce_seconds" in bad.stderr
    api = BotAPI().start()
    try:
        api.fail("getMe", *["drop"] * 10)
        result = subprocess.run([sys.executable, "-m", "cookiebaker", "bot", "--base-url", api.base_url,
                                 "--state-db", str(tmp_path / "s.sqlite3")], capture_output=True, text=True,
                                env={**os.environ, "TELEGRAM_BOT_TOKEN": TOKEN}, cwd=tmp_path, timeout=120)
    finally:
        api.stop()
    assert result.returncode == 1 and "cannot reach the Bot API" in result.stderr, result.stderr
    assert TOKEN not in result.stderr and json.dumps(TOKEN) not in result.stderr
