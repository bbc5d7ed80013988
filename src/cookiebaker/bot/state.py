"""The bot's own settings per chat (SFW or not), in a small SQLite file that survives restarts."""

from __future__ import annotations

import sqlite3
from pathlib import Path


class ChatSettings:
    """Whether each chat is answered by the SFW responder; chats never switched get ``default_sfw``."""

    def __init__(self, path: str | Path, default_sfw: bool) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.default_sfw = default_sfw
        with self._connect() as connection:
            connection.execute("CREATE TABLE IF NOT EXISTS chat_settings (chat_id TEXT PRIMARY KEY, sfw INTEGER NOT NULL)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10)

    def sfw(self, chat_id: int | str) -> bool:
        with self._connect() as connection:
            row = connection.execute("SELECT sfw FROM chat_settings WHERE chat_id = ?", (str(chat_id),)).fetchone()
        return self.default_sfw if row is None else bool(row[0])

    def set_sfw(self, chat_id: int | str, sfw: bool) -> None:
        with self._connect() as connection:  # one transaction, committed on leaving
            connection.execute("INSERT INTO chat_settings (chat_id, sfw) VALUES (?, ?) "
                               "ON CONFLICT(chat_id) DO UPDATE SET sfw = excluded.sfw", (str(chat_id), int(sfw)))
