"""Persistence of chat messages: history reads, and a writer that batches inserts.

Concurrent senders' messages are written by one task, many per transaction, and each sender
is answered only after the commit that holds its message. Nothing here knows of sockets: the
writer hands committed messages, in id order, to the on_commit callback it was given.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.db import IMMEDIATE
from app.models import Message, utcnow

logger = logging.getLogger("chatroom.store")

MAX_BATCH = 512  # messages per transaction; bounds the latency one commit adds


class StoreFailed(Exception):
    """The message could not be stored; it was not broadcast either."""


@dataclass(slots=True)
class Committed:
    message: Message
    client_msg_id: str | None


OnCommit = Callable[[Sequence[Committed]], Awaitable[None]]


async def history_page(
    sessions: async_sessionmaker[AsyncSession],
    *,
    room: str,
    limit: int,
    before: int | None = None,
    after: int | None = None,
) -> tuple[list[Message], bool]:
    """Up to limit messages of room, oldest first, and whether more lie beyond them.

    With after: the first messages after that id (has_more: newer ones remain).
    Otherwise: the latest messages before `before` or now (has_more: older ones remain).
    """
    query = select(Message).where(Message.room == room)
    if before is not None:
        query = query.where(Message.id < before)
    if after is not None:
        query = query.where(Message.id > after).order_by(Message.id)
    else:
        query = query.order_by(Message.id.desc())
    async with sessions() as session:
        rows = list((await session.scalars(query.limit(limit + 1))).all())
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
    future: asyncio.Future[Message] = field(repr=False)


class MessageWriter:
    """The single writer of messages in this process."""

    def __init__(self, engine: AsyncEngine, on_commit: OnCommit) -> None:
        self._engine = engine
        self._on_commit = on_commit
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="chatroom-message-writer")

    async def stop(self) -> None:
        """Finish every message already submitted, then stop."""
        self._closing = True
        if self._task is not None:
            await self._queue.put(None)
            await self._task
            self._task = None

    def submit(
        self, *, room: str, author: str, body: str, client_msg_id: str | None = None
    ) -> asyncio.Future[Message]:
        """Queue one message; the future resolves once it is committed and handed on.

        Messages are written in submission order, so one sender's messages keep their order.
        """
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
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
        try:
            committed = await self._insert(batch)
        except Exception as exc:
            logger.exception("storing %d message(s) failed", len(batch))
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(StoreFailed(str(exc)))
            return
        try:
            await self._on_commit(committed)
        except Exception:
            # Stored but not fanned out: clients recover it from history with `since`.
            logger.exception("publishing %d stored message(s) failed", len(committed))
        for pending, done in zip(batch, committed, strict=True):
            if not pending.future.done():
                pending.future.set_result(done.message)

    async def _insert(self, batch: list[_Pending]) -> list[Committed]:
        now = utcnow()
        rows = [
            {"room": p.room, "author": p.author, "body": p.body, "created_at": now} for p in batch
        ]
        statement = insert(Message).returning(Message.id, sort_by_parameter_order=True)
        async with self._engine.connect() as connection:
            connection = await connection.execution_options(**IMMEDIATE)
            async with connection.begin():
                ids = (await connection.execute(statement, rows)).scalars().all()
        return [
            Committed(
                Message(id=id_, room=p.room, author=p.author, body=p.body, created_at=now),
                p.client_msg_id,
            )
            for id_, p in zip(ids, batch, strict=True)
        ]
