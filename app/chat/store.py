"""Persistence of chat messages: history reads, and a writer that batches inserts.

Concurrent senders' messages are written by one task, many per transaction, and each sender
is answered only after the commit that holds its message. Nothing here knows of sockets: the
writer hands committed messages, in id order, to the on_commit callback it was given.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

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
        if engine.dialect.name == "sqlite":
            self._sqlite = create_sqlite_writer_engine(str(engine.url))
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="chatroom-writer")
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
            await asyncio.get_running_loop().run_in_executor(self._thread, self._sqlite.dispose)
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
            if len(batch) > 1 and not isinstance(exc, OperationalError):
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
        with self._sqlite.connect() as connection:
            return _insert(connection.execution_options(**IMMEDIATE), batch)


def _insert(connection: Connection, batch: list[_Pending]) -> list[Stored]:
    """Store batch in one transaction; resends resolve to the messages stored before."""
    now = utcnow()
    sqlite = connection.dialect.name == "sqlite"
    with connection.begin():
        # Inside the write transaction, so no other writer can slip a resend in.
        known = _stored_resends(connection, batch)
        fresh: dict[tuple[str, str | None], _Pending] = {}
        rows = []
        for pending in batch:
            key = (pending.author, pending.client_msg_id)
            if pending.client_msg_id is None or (key not in known and key not in fresh):
                if pending.client_msg_id is not None:
                    fresh[key] = pending
                rows.append(pending)
        ids: Sequence[int] = []
        if rows:
            if sqlite:
                ids = _insert_sqlite(connection, rows, now)
            else:
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
    inserted = {
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
    results = []
    for pending in batch:
        if id(pending) in inserted:
            results.append(Stored(inserted[id(pending)]))
        else:
            key = (pending.author, pending.client_msg_id)
            earlier = known.get(key) or inserted[id(fresh[key])]
            results.append(Stored(earlier, duplicate=True))
    return results


_SQLITE_INSERT = (
    "INSERT INTO messages (room, author, body, client_msg_id, created_at) VALUES (?, ?, ?, ?, ?)"
)


def _insert_sqlite(connection: Connection, rows: list[_Pending], now: datetime) -> Sequence[int]:
    """The batch through sqlite3's executemany, the one fast path past SQLAlchemy's per-row work.

    Inside the BEGIN IMMEDIATE transaction no one else writes, and AUTOINCREMENT numbers the
    rows one after another, so the ids are the last len(rows) up to the table's sequence.
    """
    created_at = _created_at_bind(connection.dialect)(now)
    raw = connection.connection.driver_connection
    assert raw is not None  # noqa: S101 (a live connection has its DBAPI connection)
    cursor = raw.cursor()
    try:
        cursor.executemany(
            _SQLITE_INSERT,
            [(p.room, p.author, p.body, p.client_msg_id, created_at) for p in rows],
        )
        (last,) = cursor.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'messages'"
        ).fetchone()
    finally:
        cursor.close()
    return range(last - len(rows) + 1, last + 1)


def _created_at_bind(dialect: Dialect) -> Callable[[datetime], Any]:
    """How SQLAlchemy itself stores a created_at value, so reads parse it back alike."""
    process = Message.__table__.c.created_at.type.bind_processor(dialect)
    return process if process is not None else (lambda value: value)


def _stored_resends(
    connection: Connection, batch: list[_Pending]
) -> dict[tuple[str, str | None], StoredMessage]:
    """Messages already stored under the batch's (author, client_msg_id) pairs."""
    keys = {(p.author, p.client_msg_id) for p in batch if p.client_msg_id is not None}
    if not keys:
        return {}
    query = select(*_COLUMNS).where(
        Message.author.in_({author for author, _ in keys}),
        Message.client_msg_id.in_({cid for _, cid in keys}),
    )
    found = {}
    for row in connection.execute(query):
        message = StoredMessage(*row)
        if (message.author, message.client_msg_id) in keys:
            found[(message.author, message.client_msg_id)] = message
    return found
