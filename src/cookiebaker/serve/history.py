"""Chat history per (client_name, chat_id): SQLite by default, PostgreSQL with a database URL (SQLAlchemy)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import DateTime, Index, Integer, String, Text, create_engine, delete, event, inspect, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


class _Base(DeclarativeBase):
    pass


class Turn(_Base):
    __tablename__ = "cookiebaker_turns"
    __table_args__ = (Index("ix_turns_client_chat_id", "client_name", "chat_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    client_name: Mapped[str] = mapped_column(String(200))
    chat_id: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    speaker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    """Who wrote a user turn, as the model is shown (``Name: text``); null for the responder's own turns."""
    sender_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    """The client's id of that person (what /forget-style deletions select by); never shown to the model."""
    reply_to: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """For the responder's turn: the id of the user turn it answered (deleted with it by ``forget``)."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True),
                                                 default=lambda: datetime.now(timezone.utc))


def _sqlite_pragmas(connection, _record) -> None:  # noqa: ANN001
    """Write-ahead logging: readers do not wait for writers, and a commit costs one fsync of the log."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class HistoryStore:
    """Bounded history: at most ``max_turns_stored`` turns are kept per client and chat."""

    def __init__(self, url: str, max_turns_stored: int = 200) -> None:
        if "://" not in url:
            Path(url).expanduser().parent.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{Path(url).expanduser()}"
        self.url = url
        self.max_turns_stored = max_turns_stored
        self.engine = create_engine(url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        _Base.metadata.create_all(self.engine)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """A history database from an earlier version gets the columns added since (nullable, so old rows stay)."""
        table = Turn.__table__
        present = {column["name"] for column in inspect(self.engine).get_columns(table.name)}
        missing = [column for column in table.columns if column.name not in present]
        with self.engine.begin() as connection:
            for column in missing:
                kind = column.type.compile(dialect=self.engine.dialect)
                connection.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))

    def recent(self, client_name: str, chat_id: str, limit: int) -> list[dict[str, str]]:
        """The chat's last ``limit`` turns, oldest first; a user turn with its ``speaker`` where it has one."""
        if limit <= 0:
            return []
        with Session(self.engine) as session:
            rows = session.scalars(
                select(Turn).where(Turn.client_name == client_name, Turn.chat_id == chat_id)
                .order_by(Turn.id.desc()).limit(limit)
            ).all()
        return [{"role": row.role, "content": row.content, **({"speaker": row.speaker} if row.speaker else {})}
                for row in reversed(rows)]

    def add(self, client_name: str, chat_id: str, turns: list[dict[str, str]]) -> None:
        """Store turns (role, content, and for a user turn its speaker and sender id) in one transaction."""
        with Session(self.engine) as session, session.begin():
            rows = [Turn(client_name=client_name, chat_id=chat_id, role=t["role"], content=t["content"],
                         speaker=t.get("speaker"), sender_id=t.get("sender_id")) for t in turns]
            session.add_all(rows)
            session.flush()
            for before, row in zip(rows, rows[1:]):  # a reply stored with the turn it answers
                if before.role == "user" and row.role == "assistant":
                    row.reply_to = before.id
            session.flush()
            keep = select(Turn.id).where(Turn.client_name == client_name, Turn.chat_id == chat_id) \
                .order_by(Turn.id.desc()).limit(self.max_turns_stored).scalar_subquery()
            oldest_kept = select(Turn.id).where(Turn.id.in_(keep)).order_by(Turn.id).limit(1).scalar_subquery()
            session.execute(delete(Turn).where(Turn.client_name == client_name, Turn.chat_id == chat_id,
                                               Turn.id < oldest_kept))

    def forget(self, client_name: str, chat_id: str, sender_id: str) -> int:
        """Delete a person's turns in a chat and the replies given to them (the assistant turn stored with each),
        in one transaction; returns how many turns were deleted."""
        with Session(self.engine) as session, session.begin():
            theirs = session.scalars(select(Turn.id).where(Turn.client_name == client_name, Turn.chat_id == chat_id,
                                                           Turn.sender_id == sender_id)).all()
            if not theirs:
                return 0
            deleted = session.execute(delete(Turn).where(
                Turn.client_name == client_name, Turn.chat_id == chat_id,
                Turn.id.in_(theirs) | Turn.reply_to.in_(theirs)))
            return deleted.rowcount

    def close(self) -> None:
        self.engine.dispose()
