"""Persistence of chat messages: history reads, and a writer that batches inserts.

Concurrent senders' messages are written by one task, many per transaction, and each sender
is answered only after the commit that holds its message. Nothing here knows of sockets: the
writer hands committed messages, in id order, to the on_commit callback it was given.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.pool import PoolProxiedConnection

from app.chat.ordering import LocalOnly, RoomLock
from app.db import IMMEDIATE, create_sqlite_writer_engine
from app.models import Message, utcnow

logger = logging.getLogger("chatroom.store")

MAX_BATCH = 512  # messages per transaction; bounds the latency one commit adds
WRITE_TIMEOUT_SECONDS = 10.0  # a batch insert (PostgreSQL) taking longer is abandoned


class StoreFailed(Exception):
    """The message could not be stored; it was not broadcast either."""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A stored message as the chat passes it around (ORM instances cost far more to make)."""

    id: int
    room: str
    author: str
    body: str
    created_at: datetime
    client_msg_id: str | None = None


@dataclass(frozen=True, slots=True)
class Stored:
    """The outcome of a send; duplicate: an earlier send with its client_msg_id stored it."""

    message: StoredMessage
    duplicate: bool = False


OnCommit = Callable[[Sequence[StoredMessage]], Awaitable[None]]
_COLUMNS = [getattr(Message, name) for name in StoredMessage.__dataclass_fields__]


async def history_page(
    sessions: async_sessionmaker[AsyncSession],
    *,
    room: str,
    limit: int,
    before: int | None = None,
    after: int | None = None,
) -> tuple[list[StoredMessage], bool]:
    """Up to limit messages of room, oldest first, and whether more lie beyond them.

    With after: the first messages after that id (has_more: newer ones remain).
    Otherwise: the latest messages before `before` or now (has_more: older ones remain).
    """
    query = select(*_COLUMNS).where(Message.room == room)
    if before is not None:
        query = query.where(Message.id < before)
    if after is not None:
        query = query.where(Message.id > after).order_by(Message.id)
    else:
        query = query.order_by(Message.id.desc())
    async with sessions() as session:
        rows = [StoredMessage(*row) for row in await session.execute(query.limit(limit + 1))]
    has_more = len(rows) > limit
    rows = rows[:limit]
    if after is None:
        rows.reverse()
    return rows, has_more


@dataclass(slots=True)
class _Pending:
    room: str
    author: str
    body: str
    client_msg_id: str | None
    future: asyncio.Future[Stored] = field(repr=False)


class MessageWriter:
    """The single writer of messages in this process."""

    def __init__(
        self, engine: AsyncEngine, on_commit: OnCommit, room_lock: RoomLock | None = None
    ) -> None:
        self._engine = engine
        self._on_commit = on_commit
        self._room_lock = room_lock or LocalOnly()
        # SQLite: the whole transaction runs in one thread of its own, in one hop.
        self._sqlite: Engine | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._raw: PoolProxiedConnection | None = None  # the writer thread's own connection
        if engine.dialect.name == "sqlite":
            self._sqlite = create_sqlite_writer_engine(str(engine.url))
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="chatroom-writer")
            self._created_at = _CreatedAt(self._sqlite.dialect)
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Held for the writer's life: a pool checkout and reset per batch cost more than
        # the insert itself.
        self._connection: AsyncConnection | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="chatroom-message-writer")

    async def stop(self) -> None:
        """Finish every message already submitted, then stop."""
        self._closing = True
        if self._task is not None:
            await self._queue.put(None)
            await self._task
            self._task = None
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
        if self._sqlite is not None and self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._close_in_thread)
            self._thread.shutdown()

    def submit(
        self, *, room: str, author: str, body: str, client_msg_id: str | None = None
    ) -> asyncio.Future[Stored]:
        """Queue one message; the future resolves once it is committed and handed on.

        Messages are written in submission order, so one sender's messages keep their order.
        A client_msg_id the author used before resolves to the message stored then.
        """
        future: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        if self._closing or self._task is None:
            future.set_exception(StoreFailed("the server is shutting down"))
        else:
            self._queue.put_nowait(_Pending(room, author, body, client_msg_id, future))
        return future

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    await self._write(batch)
                    return
                batch.append(item)
            await self._write(batch)

    async def _write(self, batch: list[_Pending]) -> None:
        rooms = {p.room for p in batch}
        try:
            if self._sqlite is not None:
                async with self._room_lock.hold(None, rooms):
                    results = await asyncio.get_running_loop().run_in_executor(
                        self._thread, self._insert_in_thread, batch
                    )
                    await self._publish([r.message for r in results if not r.duplicate])
            else:
                connection = await self._connect()
                async with self._room_lock.hold(connection, rooms):
                    # A writer must never hang: a statement that has not returned by then
                    # fails the batch (store_failed), and the connection is replaced.
                    results = await asyncio.wait_for(
                        connection.run_sync(_insert, batch), WRITE_TIMEOUT_SECONDS
                    )
                    await self._publish([r.message for r in results if not r.duplicate])
        except Exception as exc:
            await self._disconnect()
            if len(batch) > 1 and not isinstance(exc, OperationalError | sqlite3.OperationalError):
                # Not the database as a whole (locked, read-only, full) but something in one
                # message: write them one by one so the others keep theirs.
                logger.warning("a batch of %d failed (%s); retrying singly", len(batch), exc)
                for pending in batch:
                    await self._write([pending])
                return
            logger.exception("storing %d message(s) failed", len(batch))
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(StoreFailed(str(exc)))
            return
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)

    async def _connect(self) -> AsyncConnection:
        if self._connection is None:
            connection = await self._engine.connect()
            self._connection = await connection.execution_options(**IMMEDIATE)
        return self._connection

    async def _disconnect(self) -> None:
        """Drop the connection after a failure; the next batch opens a fresh one."""
        if self._connection is not None:
            connection, self._connection = self._connection, None
            try:
                await connection.invalidate()
                await connection.close()
            except Exception:
                logger.debug("closing a failed writer connection failed", exc_info=True)

    async def _publish(self, messages: list[StoredMessage]) -> None:
        try:
            await self._on_commit(messages)
        except Exception:
            # Stored but not fanned out (the broker is down): workers re-read what they
            # missed when it comes back, and clients can always resume with `since`.
            logger.exception("publishing %d stored message(s) failed", len(messages))

    def _insert_in_thread(self, batch: list[_Pending]) -> list[Stored]:
        assert self._sqlite is not None  # noqa: S101 (only called when set)
        if self._raw is None:
            # Opened here, in the writer thread that alone uses it, and held: a checkout and
            # reset per batch cost more than the insert.
            self._raw = self._sqlite.raw_connection()
        raw = self._raw.driver_connection
        assert raw is not None  # noqa: S101 (a live connection has its DBAPI connection)
        try:
            return _insert_sqlite(raw, batch, self._created_at)
        except Exception:
            self._raw.invalidate()  # the next batch gets a fresh connection, as on PostgreSQL
            self._raw = None
            raise

    def _close_in_thread(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None
        if self._sqlite is not None:
            self._sqlite.dispose()


_Key = tuple[str, str | None]


def _new_rows(batch: list[_Pending], known: dict[_Key, StoredMessage]) -> list[_Pending]:
    """The messages of batch to insert: not resends of stored ones, nor of earlier ones."""
    seen: set[_Key] = set()
    rows = []
    for pending in batch:
        key = (pending.author, pending.client_msg_id)
        if pending.client_msg_id is None or (key not in known and key not in seen):
            if pending.client_msg_id is not None:
                seen.add(key)
            rows.append(pending)
    return rows


def _outcomes(
    batch: list[_Pending],
    rows: list[_Pending],
    ids: Sequence[int],
    known: dict[_Key, StoredMessage],
    now: datetime,
) -> list[Stored]:
    """Each message's outcome: stored now, or a resend of the message stored first."""
    stored = {
        id(p): StoredMessage(
            id=id_,
            room=p.room,
            author=p.author,
            body=p.body,
            client_msg_id=p.client_msg_id,
            created_at=now,
        )
        for id_, p in zip(ids, rows, strict=True)
    }
    first = dict(known)
    for pending in rows:
        first.setdefault((pending.author, pending.client_msg_id), stored[id(pending)])
    return [
        Stored(stored[id(p)])
        if id(p) in stored
        else Stored(first[(p.author, p.client_msg_id)], duplicate=True)
        for p in batch
    ]


def _insert(connection: Connection, batch: list[_Pending]) -> list[Stored]:
    """Store batch in one transaction; resends resolve to the messages stored before."""
    now = utcnow()
    with connection.begin():
        # Inside the write transaction, so no other writer can slip a resend in.
        known = _stored_resends(connection, batch)
        rows = _new_rows(batch, known)
        ids: Sequence[int] = []
        if rows:
            statement = insert(Message).returning(Message.id, sort_by_parameter_order=True)
            values = [
                {
                    "room": p.room,
                    "author": p.author,
                    "body": p.body,
                    "client_msg_id": p.client_msg_id,
                    "created_at": now,
                }
                for p in rows
            ]
            ids = connection.execute(statement, values).scalars().all()
    return _outcomes(batch, rows, ids, known, now)


# Built once: constructing a select costs more than running it, at one batch per message.
_RESENDS = select(*_COLUMNS).where(
    Message.author.in_(bindparam("authors", expanding=True)),
    Message.client_msg_id.in_(bindparam("cids", expanding=True)),
)


def _stored_resends(connection: Connection, batch: list[_Pending]) -> dict[_Key, StoredMessage]:
    """Messages already stored under the batch's (author, client_msg_id) pairs."""
    keys = _resend_keys(batch)
    if not keys:
        return {}
    parameters = {"authors": list({a for a, _ in keys}), "cids": list({c for _, c in keys})}
    rows = (StoredMessage(*row) for row in connection.execute(_RESENDS, parameters))
    return {(m.author, m.client_msg_id): m for m in rows if (m.author, m.client_msg_id) in keys}


def _resend_keys(batch: list[_Pending]) -> set[_Key]:
    return {(p.author, p.client_msg_id) for p in batch if p.client_msg_id is not None}


class _CreatedAt:
    """created_at to and from SQLite's storage, exactly as SQLAlchemy converts it, so rows
    written here read back alike through the ORM."""

    def __init__(self, dialect: Dialect) -> None:
        column_type = Message.__table__.c.created_at.type.dialect_impl(dialect)
        self.bind = column_type.bind_processor(dialect) or _unchanged
        self.result: Callable[[Any], Any] = (
            column_type.result_processor(dialect, None) or _unchanged
        )


def _unchanged(value: Any) -> Any:
    return value


_SQLITE_RESENDS = (
    "SELECT id, room, author, body, created_at, client_msg_id FROM messages"
    " WHERE author IN ({authors}) AND client_msg_id IN ({cids})"
)
_SQLITE_INSERT = (
    "INSERT INTO messages (room, author, body, client_msg_id, created_at) VALUES (?, ?, ?, ?, ?)"
)


def _insert_sqlite(
    raw: sqlite3.Connection, batch: list[_Pending], created_at: _CreatedAt
) -> list[Stored]:
    """_insert for SQLite, straight through sqlite3: one message per batch is the common case
    in a quiet room, and SQLAlchemy's statement handling costs several times the commit.

    Inside the BEGIN IMMEDIATE transaction no one else writes, and AUTOINCREMENT numbers the
    rows one after another, so the ids are the last len(rows) up to the table's sequence.
    """
    now = utcnow()
    raw.execute("BEGIN IMMEDIATE")
    try:
        known = _sqlite_resends(raw, batch, created_at)
        rows = _new_rows(batch, known)
        ids: Sequence[int] = []
        if rows:
            stamp = created_at.bind(now)
            raw.executemany(
                _SQLITE_INSERT, [(p.room, p.author, p.body, p.client_msg_id, stamp) for p in rows]
            )
            (last,) = raw.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'messages'"
            ).fetchone()
            ids = range(last - len(rows) + 1, last + 1)
        raw.execute("COMMIT")
    except BaseException:
        if raw.in_transaction:
            raw.execute("ROLLBACK")
        raise
    return _outcomes(batch, rows, ids, known, now)


def _sqlite_resends(
    raw: sqlite3.Connection, batch: list[_Pending], created_at: _CreatedAt
) -> dict[_Key, StoredMessage]:
    keys = _resend_keys(batch)
    if not keys:
        return {}
    authors, cids = list({a for a, _ in keys}), list({c for _, c in keys})
    query = _SQLITE_RESENDS.format(
        authors=", ".join("?" * len(authors)), cids=", ".join("?" * len(cids))
    )
    found = {}
    for id_, room, author, body, stamp, cid in raw.execute(query, [*authors, *cids]):
        if (author, cid) in keys:
            found[(author, cid)] = StoredMessage(
                id_, room, author, body, created_at.result(stamp), cid
            )
    return found
