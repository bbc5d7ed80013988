"""A local stand-in of Telegram's Bot API for the real python-telegram-bot: getMe, getUpdates (long polling),
sendMessage, sendChatAction, getChatMember, deleteWebhook. It queues the updates a test writes, records what the
bot sent, and injects faults (a 429 with retry_after, a dropped connection) into the next calls of a method."""

from __future__ import annotations

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

TOKEN = "123456:TEST-token-never-logged"
BOT = {"id": 999, "is_bot": True, "first_name": "Cookie", "username": "cookie_twin_bot", "can_join_groups": True,
       "can_read_all_group_messages": True, "supports_inline_queries": False}
#: Form fields python-telegram-bot sends as plain strings (everything else is JSON-encoded).
TEXT_FIELDS = {"text", "action"}


class BotAPI:
    """Run with ``start()``; ``base_url`` is what the bot takes as its Bot API URL."""

    def __init__(self, admins: set[int] = frozenset()) -> None:
        self.admins = set(admins)
        self.updates: list[dict] = []
        self.sent: list[dict] = []
        self.actions: list[dict] = []
        self.calls: list[str] = []
        self.faults: dict[str, list[str]] = {}
        self.condition = threading.Condition()
        self.update_ids = itertools.count(1)
        self.message_ids = itertools.count(1000)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/bot"

    def start(self) -> BotAPI:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ---- What a test does ----

    def fail(self, method: str, *kinds: str) -> None:
        """The next calls of ``method`` fail, one per kind: ``429`` (retry after 1 s) or ``drop``."""
        with self.condition:
            self.faults.setdefault(method, []).extend(kinds)

    def say(self, chat: dict, sender: dict, text: str, *, reply_to: dict | None = None, edited: bool = False,
            **extra: object) -> dict:
        """Queue a message (or an edit of one) as Telegram would deliver it; returns the message."""
        message = {"message_id": next(self.message_ids), "date": int(time.time()), "chat": chat, "from": sender,
                   **({"text": text} if text else {}), **extra}
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        with self.condition:
            self.updates.append({"update_id": next(self.update_ids),
                                 ("edited_message" if edited else "message"): message})
            self.condition.notify_all()
        return message

    def sent_to(self, chat_id: int) -> list[dict]:
        with self.condition:
            return [m for m in self.sent if m["chat_id"] == chat_id]

    # ---- The API ----

    def _answer(self, method: str, params: dict) -> tuple[int, dict]:
        if method == "getMe":
            return 200, {"ok": True, "result": BOT}
        if method in ("deleteWebhook", "setMyCommands"):
            return 200, {"ok": True, "result": True}
        if method == "getUpdates":
            return 200, {"ok": True, "result": self._updates(int(params.get("offset", 0) or 0),
                                                              float(params.get("timeout", 0) or 0))}
        if method == "sendMessage":
            return 200, {"ok": True, "result": self._record_message(params)}
        if method == "sendChatAction":
            with self.condition:
                self.actions.append(params)
            return 200, {"ok": True, "result": True}
        if method == "getChatMember":
            user = {"id": int(params["user_id"]), "is_bot": False, "first_name": "Someone"}
            if int(params["user_id"]) in self.admins:
                return 200, {"ok": True, "result": {"status": "creator", "user": user, "is_anonymous": False}}
            return 200, {"ok": True, "result": {"status": "member", "user": user}}
        return 404, {"ok": False, "error_code": 404, "description": f"Not Found: method {method}"}

    def _updates(self, offset: int, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self.condition:
            self.updates = [u for u in self.updates if u["update_id"] >= offset]  # earlier ones are confirmed
            while not self.updates and time.monotonic() < deadline:
                self.condition.wait(deadline - time.monotonic())
            return list(self.updates)

    def _record_message(self, params: dict) -> dict:
        message = {"message_id": next(self.message_ids), "date": int(time.time()),
                   "chat": {"id": int(params["chat_id"]), "type": "group", "title": "?"}, "from": BOT,
                   "text": params["text"]}
        with self.condition:
            self.sent.append({"chat_id": int(params["chat_id"]), "text": params["text"],
                              "reply_to": (params.get("reply_parameters") or {}).get("message_id")})
        return message

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                method = self.path.rsplit("/", 1)[-1]
                length = int(self.headers.get("Content-Length") or 0)
                params = _params(self.rfile.read(length), self.headers.get("Content-Type", ""))
                with api.condition:
                    api.calls.append(method)
                    fault = api.faults.get(method, []).pop(0) if api.faults.get(method) else None
                if fault == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault == "429":
                    status, body = 429, {"ok": False, "error_code": 429, "description": "Too Many Requests: retry "
                                         "after 1", "parameters": {"retry_after": 1}}
                else:
                    status, body = api._answer(method, params)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST

        return Handler


def _params(raw: bytes, content_type: str) -> dict:
    if "json" in content_type:
        return json.loads(raw or b"{}")
    params = {}
    for key, value in parse_qsl(raw.decode(), keep_blank_values=True):
        if key in TEXT_FIELDS:
            params[key] = value
            continue
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


def group(chat_id: int = -1001, title: str = "Cookie Club") -> dict:
    return {"id": chat_id, "type": "supergroup", "title": title}


def private(user: dict) -> dict:
    return {"id": user["id"], "type": "private", "first_name": user["first_name"]}


def person(user_id: int, first: str, last: str | None = None) -> dict:
    return {"id": user_id, "is_bot": False, "first_name": first, **({"last_name": last} if last else {})}
