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

from sqlalchemy import bindparam, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from app.chat.batches import Key, Pending, Stored, StoredMessage, new_rows, outcomes, resend_keys
from app.chat.ordering import LocalOnly, RoomLock
from app.chat.sqlite_writer import SqliteWriter
from app.core.db import IMMEDIATE
from app.core.models import Message, utcnow

__all__ = ["MessageWriter", "Stored", "StoredMessage", "StoreFailed", "history_page"]

logger = logging.getLogger("chatroom.store")

MAX_BATCH = 512  # messages per transaction; bounds the latency one commit adds
WRITE_TIMEOUT_SECONDS = 10.0  # a batch insert (PostgreSQL) taking longer is abandoned


class StoreFailed(Exception):
    """The message could not be stored; it was not broadcast either."""


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


class MessageWriter:
    """The single writer of messages in this process."""

    def __init__(
        self, engine: AsyncEngine, on_commit: OnCommit, room_lock: RoomLock | None = None
    ) -> None:
        self._engine = engine
        self._on_commit = on_commit
        self._room_lock = room_lock or LocalOnly()
        # SQLite: straight through sqlite3, on the loop or in a thread (sqlite_writer.py).
        self._sqlite = SqliteWriter(str(engine.url)) if engine.dialect.name == "sqlite" else None
        self._queue: asyncio.Queue[Pending | None] = asyncio.Queue()
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
        if self._sqlite is not None:
            await self._sqlite.close()

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
            self._queue.put_nowait(Pending(room, author, body, client_msg_id, future))
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

    async def _write(self, batch: list[Pending]) -> None:
        rooms = {p.room for p in batch}
        try:
            if self._sqlite is not None:
                async with self._room_lock.hold(None, rooms):
                    results = await self._sqlite.insert(batch)
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


def _insert(connection: Connection, batch: list[Pending]) -> list[Stored]:
    """Store batch in one transaction; resends resolve to the messages stored before."""
    now = utcnow()
    with connection.begin():
        # Inside the write transaction, so no other writer can slip a resend in.
        known = _stored_resends(connection, batch)
        rows = new_rows(batch, known)
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
    return outcomes(batch, rows, ids, known, now)


# Built once: constructing a select costs more than running it, at one batch per message.
_RESENDS = select(*_COLUMNS).where(
    Message.author.in_(bindparam("authors", expanding=True)),
    Message.client_msg_id.in_(bindparam("cids", expanding=True)),
)


def _stored_resends(connection: Connection, batch: list[Pending]) -> dict[Key, StoredMessage]:
    """Messages already stored under the batch's (author, client_msg_id) pairs."""
    keys = resend_keys(batch)
    if not keys:
        return {}
    parameters = {"authors": list({a for a, _ in keys}), "cids": list({c for _, c in keys})}
    rows = (StoredMessage(*row) for row in connection.execute(_RESENDS, parameters))
    return {(m.author, m.client_msg_id): m for m in rows if (m.author, m.client_msg_id) in keys}
