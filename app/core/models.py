"""SQLAlchemy tables: users, the messages of every room, moderators, revoked tokens, read
markers."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, orm_insert_sentinel

# Named constraints let Alembic alter them later (SQLite batch mode needs the names).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC and always hands back an aware datetime (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JTI_MAX_CHARS = 64  # a longer jti is refused: the revocations table could not hold it
# What a username may be (registration, and the `sub` of a token): fits users.username.
USERNAME_PATTERN = r"^[A-Za-z0-9_.-]{3,32}$"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(32), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    # A password change sets this: tokens issued (iat) before it are refused.
    tokens_valid_after: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_room_id", "room", "id"),
        # A client's resend of a message it already sent to this room (same id) must not
        # store it twice; the same id in another room is another message.
        UniqueConstraint(
            "author", "room", "client_msg_id", name="uq_messages_author_room_client_msg_id"
        ),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    room: Mapped[str] = mapped_column(String(64))
    # The author's username, not users.id: usernames never change, and history reads then
    # need no join.
    author: Mapped[str] = mapped_column(String(32), ForeignKey("users.username"))
    body: Mapped[str] = mapped_column(Text)
    # The display name the author's token gave (its `name` claim), when it gave one.
    author_name: Mapped[str | None] = mapped_column(String(64))
    client_msg_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Edits and deletions are rows too ('edit', 'delete': by author, of target_id, body the
    # new one), in the room's one id sequence, so `?since=` replays them in order. The
    # target row keeps the current state: edited_at, and deleted_by with its body emptied.
    kind: Mapped[str] = mapped_column(String(8), default="message", server_default="message")
    target_id: Mapped[int | None] = mapped_column(Integer)
    edited_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    deleted_by: Mapped[str | None] = mapped_column(String(32))
    # Lets one INSERT of a whole batch hand back its ids in the batch's order (SQLAlchemy's
    # insert sentinel): SQLite does not promise RETURNING's order, and without it
    # SQLAlchemy inserts a batch one row at a time.
    _sentinel: Mapped[int | None] = orm_insert_sentinel()


class Moderator(Base):
    """Grants by `chatroom moderator NAME --room ID`: NAME may delete anyone's message there.

    Read by the server when a delete by a non-author arrives, so a grant made by the CLI in
    another process holds at once; the welcome frame's `moderator` flag, read with the
    account (app/core/users.py), may lag a grant by a few seconds.
    """

    __tablename__ = "moderators"

    username: Mapped[str] = mapped_column(String(32), primary_key=True)
    room: Mapped[str] = mapped_column(String(64), primary_key=True)


class Revocation(Base):
    """Tokens refused before they expire: every server process polls this table (see
    app/core/revocations.py), so a revocation made anywhere reaches every socket."""

    __tablename__ = "revocations"
    # AUTOINCREMENT: pollers read the rows after the last id they saw; a reused id is missed.
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(32))
    # Either the one token with this jti, or every token issued before issued_before.
    jti: Mapped[str | None] = mapped_column(String(JTI_MAX_CHARS))
    issued_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(String(32))  # the close reason its sockets get
    # When nothing it revokes is valid any more: the row may go.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class WebhookEvent(Base):
    """The webhook outbox: an event not yet delivered to the host (app/chat/webhooks.py).

    Written by the message writer in the transaction that stores its message; deleted once
    the host has answered 2xx. Only a room's first event (its head) is ever attempted, so
    attempts, retry_at and the error are the head's.
    """

    __tablename__ = "webhook_events"
    # AUTOINCREMENT: rows are deleted, and the id is the event id hosts drop repeats by, so
    # it must never be handed out twice.
    __table_args__ = (
        Index("ix_webhook_events_room_id", "room", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    room: Mapped[str] = mapped_column(String(64))
    message_id: Mapped[int] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Not before then: a failed head's backoff, or a claimed event's lease; NULL: due.
    retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ReadMarker(Base):
    """How far a user has read a room: the id of the newest message they have seen there.

    It only moves forward (app/chat/reads.py); unread counts are the messages by others
    after it, which the (room, id) index of messages finds.
    """

    __tablename__ = "read_markers"

    username: Mapped[str] = mapped_column(
        String(32), ForeignKey("users.username"), primary_key=True
    )
    room: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_read_id: Mapped[int] = mapped_column(Integer)
