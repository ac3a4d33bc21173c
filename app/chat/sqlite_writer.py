"""Storing batches of messages in SQLite: on the event loop while the write lock is free.

A hop to a thread and back costs more CPU than a small transaction itself (about 170 us
against 60-100 us on the benchmark machine; bench/writer.py), and a thread that has to win the
GIL back from a busy fan-out adds milliseconds of latency. So a small batch (up to
LOOP_BATCH_MAX messages, the common case) is written on the loop thread, on a
connection that never waits: its busy_timeout is 0, and when the write lock is held elsewhere
(another worker, or an account being written through aiosqlite) the attempt fails at once and
the batch goes to a thread whose connection waits for the lock as before. Waiting on the loop
would stall every socket, and could deadlock with an aiosqlite transaction that needs the loop
to reach its COMMIT.

The loop connection never checkpoints (wal_autocheckpoint=0): a checkpoint copies the WAL
back into the database and fsyncs it, milliseconds that must not block the loop. The thread
runs one every CHECKPOINT_EVERY batches instead, and the batches that come meanwhile queue
behind it in the thread, so that the first of them starts the WAL over from the beginning.
Larger batches always go to the thread, where SQLite works beside the loop.

SQLAlchemy is bypassed here: for one message, its statement handling cost several times the
commit. created_at is converted with SQLAlchemy's own processors, so rows read back alike.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.pool import PoolProxiedConnection

from app.chat.batches import Key, Pending, Stored, StoredMessage, new_rows, outcomes, resend_keys
from app.core.db import create_sqlite_writer_engine
from app.core.models import Message, utcnow

logger = logging.getLogger("chatroom.store")

CHECKPOINT_EVERY = 200  # batches written on the loop between two checkpoints in the thread
# Larger batches go to the thread even when the lock is free: a batch of hundreds would
# stall every socket for milliseconds, and there the hop costs less than the rows. (Ingest
# throughput measured the same either way, within this machine's noise.)
LOOP_BATCH_MAX = 8


class SqliteWriter:
    """Inserts batches into one SQLite file; used by one task at a time (MessageWriter's)."""

    def __init__(self, url: str) -> None:
        self._engine = create_sqlite_writer_engine(url)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="chatroom-writer")
        self._created_at = _CreatedAt(self._engine.dialect)
        # Each held for the writer's life: a checkout per batch costs more than the insert.
        self._on_loop: PoolProxiedConnection | None = None
        self._in_thread: PoolProxiedConnection | None = None  # touched in the thread only
        self._batches_since_checkpoint = 0
        self._checkpoint: asyncio.Future[None] | None = None

    async def insert(self, batch: list[Pending]) -> list[Stored]:
        """Store batch in one transaction; resends resolve to the messages stored before."""
        if len(batch) <= LOOP_BATCH_MAX and not self._checkpointing():
            try:
                results = self._insert_on_loop(batch)
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise
                # Someone else holds the write lock: wait for it in the thread, not here.
            else:
                self._count_towards_checkpoint()
                return results
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._insert_in_thread, batch)

    def _checkpointing(self) -> bool:
        """While the thread checkpoints, batches queue behind it there: the first write
        after a complete checkpoint starts the WAL over. Written on the loop meanwhile,
        they would keep appending to it and it would never restart."""
        return self._checkpoint is not None and not self._checkpoint.done()

    def _count_towards_checkpoint(self) -> None:
        self._batches_since_checkpoint += 1
        if self._batches_since_checkpoint >= CHECKPOINT_EVERY:
            self._batches_since_checkpoint = 0
            loop = asyncio.get_running_loop()
            self._checkpoint = loop.run_in_executor(self._thread, self._checkpoint_in_thread)
            self._checkpoint.add_done_callback(_log_checkpoint_failure)

    async def close(self) -> None:
        if self._on_loop is not None:
            self._on_loop.close()
            self._on_loop = None
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close_in_thread)
        self._thread.shutdown()

    def _insert_on_loop(self, batch: list[Pending]) -> list[Stored]:
        if self._on_loop is None:
            connection = self._engine.raw_connection()
            raw = connection.driver_connection
            assert raw is not None  # noqa: S101 (a live connection has its DBAPI connection)
            raw.execute("PRAGMA busy_timeout=0")
            raw.execute("PRAGMA wal_autocheckpoint=0")
            self._on_loop = connection
        return self._insert_with(self._on_loop, batch, on_loop=True)

    def _insert_in_thread(self, batch: list[Pending]) -> list[Stored]:
        if self._in_thread is None:
            self._in_thread = self._engine.raw_connection()
        return self._insert_with(self._in_thread, batch, on_loop=False)

    def _insert_with(
        self, connection: PoolProxiedConnection, batch: list[Pending], *, on_loop: bool
    ) -> list[Stored]:
        raw = connection.driver_connection
        assert raw is not None  # noqa: S101 (a live connection has its DBAPI connection)
        try:
            return insert_batch(raw, batch, self._created_at)
        except sqlite3.OperationalError as exc:
            if on_loop and _busy(exc):
                raise  # the connection is fine; the batch moves to the thread
            self._drop(on_loop=on_loop)
            raise
        except Exception:
            self._drop(on_loop=on_loop)  # the next batch gets a fresh connection
            raise

    def _drop(self, *, on_loop: bool) -> None:
        connection = self._on_loop if on_loop else self._in_thread
        if connection is not None:
            connection.invalidate()
        if on_loop:
            self._on_loop = None
        else:
            self._in_thread = None

    def _checkpoint_in_thread(self) -> None:
        if self._in_thread is None:
            self._in_thread = self._engine.raw_connection()
        raw = self._in_thread.driver_connection
        assert raw is not None  # noqa: S101 (a live connection has its DBAPI connection)
        # PASSIVE: copies what no reader still needs, never waits for readers or writers.
        raw.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _close_in_thread(self) -> None:
        if self._in_thread is not None:
            self._in_thread.close()
            self._in_thread = None
        self._engine.dispose()


def _busy(exc: sqlite3.OperationalError) -> bool:
    """The write lock is held elsewhere (SQLITE_BUSY, or one of its extended codes)."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY


def _log_checkpoint_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.warning("WAL checkpoint failed: %s", future.exception())


class _CreatedAt:
    """created_at to and from SQLite's storage, exactly as SQLAlchemy converts it."""

    def __init__(self, dialect: Dialect) -> None:
        column_type = Message.__table__.c.created_at.type.dialect_impl(dialect)
        self.bind = column_type.bind_processor(dialect) or _unchanged
        self.result: Callable[[Any], Any] = (
            column_type.result_processor(dialect, None) or _unchanged
        )


def _unchanged(value: Any) -> Any:
    return value


_RESENDS = (
    "SELECT id, room, author, body, created_at, client_msg_id FROM messages"
    " WHERE author IN ({authors}) AND client_msg_id IN ({cids})"
)
_INSERT = (
    "INSERT INTO messages (room, author, body, client_msg_id, created_at) VALUES (?, ?, ?, ?, ?)"
)


def insert_batch(
    raw: sqlite3.Connection, batch: list[Pending], created_at: _CreatedAt
) -> list[Stored]:
    """One BEGIN IMMEDIATE transaction: look up resends, insert the rest, commit.

    Inside it no one else writes, and AUTOINCREMENT numbers the rows one after another, so
    the ids are the last len(rows) up to the table's sequence.
    """
    now = utcnow()
    raw.execute("BEGIN IMMEDIATE")
    try:
        known = _stored_resends(raw, batch, created_at)
        rows = new_rows(batch, known)
        ids: Sequence[int] = []
        if rows:
            stamp = created_at.bind(now)
            raw.executemany(
                _INSERT, [(p.room, p.author, p.body, p.client_msg_id, stamp) for p in rows]
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
    return outcomes(batch, rows, ids, known, now)


def _stored_resends(
    raw: sqlite3.Connection, batch: list[Pending], created_at: _CreatedAt
) -> dict[Key, StoredMessage]:
    keys = resend_keys(batch)
    if not keys:
        return {}
    authors, cids = list({a for a, _ in keys}), list({c for _, c in keys})
    query = _RESENDS.format(authors=", ".join("?" * len(authors)), cids=", ".join("?" * len(cids)))
    found = {}
    for id_, room, author, body, stamp, cid in raw.execute(query, [*authors, *cids]):
        if (author, cid) in keys:
            found[(author, cid)] = StoredMessage(
                id_, room, author, body, created_at.result(stamp), cid
            )
    return found
