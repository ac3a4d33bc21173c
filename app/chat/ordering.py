"""Write locks that keep each room's messages in one order across processes.

A message is stored and then published. With one process, the single writer task already
does both in id order. With several processes, two of them could commit messages of one room
and publish them in the opposite order, or a client resuming with `?since=` could read past
a message committed a moment later with a smaller id. So each writer holds a lock on the
rooms it writes from before the insert until after the publish: within a room, ids are then
allocated, committed and published in one order, on every worker.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection


class RoomLock(Protocol):
    def hold(
        self, connection: AsyncConnection, rooms: Iterable[str]
    ) -> AbstractAsyncContextManager[None]:
        """Hold rooms for the writes and publishes done inside."""


class LocalOnly:
    """One process, one writer task: its order is already the order."""

    @asynccontextmanager
    async def hold(self, connection: AsyncConnection, rooms: Iterable[str]) -> AsyncIterator[None]:
        yield


class FileLock:
    """SQLite shared by processes of one host: one lock file beside the database.

    SQLite has one writer at a time anyway, so locking all rooms at once costs nothing.
    """

    def __init__(self, path: Path) -> None:
        self._path = path

    @asynccontextmanager
    async def hold(self, connection: AsyncConnection, rooms: Iterable[str]) -> AsyncIterator[None]:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


class AdvisoryLock:
    """PostgreSQL: a session advisory lock per room, taken in one global order (no deadlock).

    Session-level, so it outlives the commit and covers the publish that follows.
    """

    @asynccontextmanager
    async def hold(self, connection: AsyncConnection, rooms: Iterable[str]) -> AsyncIterator[None]:
        keys = sorted({room_key(room) for room in rooms})
        for key in keys:
            await connection.execute(select(func.pg_advisory_lock(key)))
        await connection.commit()
        try:
            yield
        finally:
            await connection.execute(select(func.pg_advisory_unlock_all()))
            await connection.commit()


def room_key(room: str) -> int:
    """A stable signed 64-bit key for a room (Python's hash() differs between processes)."""
    return int.from_bytes(
        hashlib.blake2b(room.encode(), digest_size=8).digest(), "big", signed=True
    )


def create_room_lock(database_url: str, *, shared: bool) -> RoomLock:
    """The lock for this deployment; shared: other processes write the same database."""
    if not shared:
        return LocalOnly()
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        return AdvisoryLock()
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return FileLock(Path(url.database).resolve().with_suffix(".writelock"))
    raise ValueError(f"no cross-process write lock for {url.get_backend_name()} databases")
