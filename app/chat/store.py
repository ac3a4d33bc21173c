"""Persistence of chat messages: history reads, and the one writer, which batches inserts.

Concurrent senders' messages are written by one task, many per transaction, through
SQLAlchemy on the async engine (aiosqlite or asyncpg). Each sender is answered only after
the commit that holds its message, and committed messages are published, in id order, to the
broker: stored before anyone sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from app.chat.broker import Broker
from app.chat.hub import Frame
from app.chat.ordering import RoomLock
from app.chat.protocol import message_bytes, stored_frame
from app.core.db import AUTOCOMMIT
from app.core.metrics import Metrics
from app.core.models import Message, Moderator, WebhookEvent, utcnow

logger = logging.getLogger("chatroom.store")

MAX_BATCH = 512  # messages per transaction; bounds the latency one commit adds
WRITE_TIMEOUT_SECONDS = 10.0  # a batch taking longer is abandoned: store_failed
STREAM_ROWS = 50  # rows fetched at a time by a read that may stop early


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A stored message as the chat passes it around (ORM instances cost far more to make)."""

    id: int
    room: str
    author: str
    body: str
    created_at: datetime
    client_msg_id: str | None = None
    edited_at: datetime | None = None
    deleted_by: str | None = None
    kind: str = "message"  # or a change of message target_id: "edit", "delete"
    target_id: int | None = None
    author_name: str | None = None  # the display name the author's token gave


@dataclass(frozen=True, slots=True)
class Stored:
    """The outcome of a send.

    duplicate: an earlier send with its client_msg_id stored it; published: the broker took
    it (when not, no one else was sent it, and readers catch up from the database).
    """

    message: StoredMessage
    duplicate: bool = False
    published: bool = True


class StoreFailed(Exception):
    """The message could not be stored; it was not broadcast either."""


class ChangeRefused(Exception):
    """An edit or delete the sender may not make; nothing was changed."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(slots=True)
class _Pending:
    room: str
    author: str
    body: str
    client_msg_id: str | None
    name: str | None  # the author's display name
    future: asyncio.Future[Stored] = field(repr=False)

    @property
    def key(self) -> ResendKey | None:
        """Under which a resend of this message is found; None when it has no client id."""
        if self.client_msg_id is None:
            return None
        return (self.author, self.room, self.client_msg_id)


@dataclass(slots=True)
class _Change:
    room: str
    user: str
    kind: str  # "edit" or "delete"
    target: int
    body: str  # the new one; "" for a delete
    moderator: bool  # by the token's claim (a CLI grant is looked up when needed)
    future: asyncio.Future[Stored] = field(repr=False)


_COLUMNS = (
    Message.id,
    Message.room,
    Message.author,
    Message.body,
    Message.created_at,
    Message.client_msg_id,
    Message.edited_at,
    Message.deleted_by,
    Message.kind,
    Message.target_id,
    Message.author_name,
)
MESSAGES_ONLY = Message.kind == "message"


def _stored(row: Any) -> StoredMessage:
    """A row of _COLUMNS (more columns than SQLAlchemy's typed select overloads name)."""
    return StoredMessage(*row)


async def history_page(
    sessions: async_sessionmaker[AsyncSession],
    *,
    room: str,
    limit: int,
    before: int | None = None,
    after: int | None = None,
    changes: bool = False,
) -> tuple[list[StoredMessage], bool]:
    """Up to limit messages of room, oldest first, and whether more lie beyond them.

    With after: the first messages after that id (has_more: newer ones remain).
    Otherwise: the latest messages before `before` or now (has_more: older ones remain).
    Messages are in their current state; changes: the edit and delete rows too.
    """
    query = select(*_COLUMNS).where(Message.room == room)
    if not changes:
        query = query.where(MESSAGES_ONLY)
    if before is not None:
        query = query.where(Message.id < before)
    if after is not None:
        query = query.where(Message.id > after).order_by(Message.id)
    else:
        query = query.order_by(Message.id.desc())
    async with sessions() as session:
        rows = [_stored(row) for row in await session.execute(query.limit(limit + 1))]
    has_more = len(rows) > limit
    rows = rows[:limit]
    if after is None:
        rows.reverse()
    return rows, has_more


async def frames_after(
    sessions: async_sessionmaker[AsyncSession], *, room: str, after: int, limit: int, space: int
) -> tuple[list[str], int, bool]:
    """The frames of room after that id (messages, edits, deletes), oldest first: at most
    limit of them, of at most space bytes together (protocol.message_bytes); the id of the
    last one given (after, if none); and whether more remain.

    Rows are read a few at a time and reading stops at the budget: a replay never holds
    more of the room than it sends.
    """
    query = (
        select(*_COLUMNS)
        .where(Message.room == room, Message.id > after)
        .order_by(Message.id)
        .limit(limit + 1)
        .execution_options(yield_per=STREAM_ROWS)
    )
    texts: list[str] = []
    async with sessions() as session:
        result = await session.stream(query)
        try:
            async for row in result:
                text = stored_frame(_stored(row))
                space -= message_bytes(text)
                if len(texts) == limit or space < 0:
                    return texts, after, True
                texts.append(text)
                after = row.id
        finally:
            await result.close()
    return texts, after, False


async def messages_by_id(
    connection: AsyncConnection, ids: Collection[int]
) -> dict[int, StoredMessage]:
    """The stored messages of these ids (absent: no such message)."""
    query = select(*_COLUMNS).where(Message.id.in_(sorted(ids)))
    return {row.id: _stored(row) for row in await connection.execute(query)}


@dataclass(frozen=True, slots=True)
class RoomActivity:
    room: str
    last_message_id: int
    last_message_at: datetime
    last_user: str


async def recent_rooms(
    sessions: async_sessionmaker[AsyncSession],
    *,
    limit: int,
    only: Collection[str] | None = None,
) -> list[RoomActivity]:
    """Up to limit rooms ordered by their newest message, newest first; only these, if given.

    Message ids grow with time, so the room's largest id is its latest message; the
    (room, id) index answers the grouping without reading the messages table.
    """
    latest = (
        select(Message.room, func.max(Message.id).label("last_id"))
        .where(MESSAGES_ONLY)
        .group_by(Message.room)
    )
    if only is not None:
        if not only:
            return []
        latest = latest.where(Message.room.in_(sorted(only)))
    newest = latest.order_by(func.max(Message.id).desc()).limit(limit).subquery()
    query = (
        select(Message.room, Message.id, Message.created_at, Message.author)
        .join(newest, Message.id == newest.c.last_id)
        .order_by(Message.id.desc())
    )
    async with sessions() as session:
        rows = (await session.execute(query)).all()
    return [RoomActivity(*row) for row in rows]


class MessageWriter:
    """The single writer of messages in this process.

    With an outbox (webhooks on), each batch also queues a webhook event per new message in
    the same transaction (each edit and delete too, in its own), and sets the outbox event
    for the delivery task once committed.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        broker: Broker,
        room_lock: RoomLock,
        *,
        outbox: asyncio.Event | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._engine = engine
        self._metrics = metrics or Metrics()
        self._broker = broker
        self._room_lock = room_lock
        self._outbox = outbox
        self._queue: asyncio.Queue[_Pending | _Change | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Held for the writer's life: a pool checkout per batch costs more than a small insert.
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
        await self._disconnect(invalidate=False)

    def submit(
        self,
        *,
        room: str,
        author: str,
        body: str,
        client_msg_id: str | None = None,
        name: str | None = None,
    ) -> asyncio.Future[Stored]:
        """Queue one message (name: the author's display name); the future resolves once it
        is committed and published.

        Messages are written in submission order, so one sender's messages keep their order.
        A client_msg_id the author used before in this room resolves to the message stored
        then.
        """
        future: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        if self._closing or self._task is None:
            future.set_exception(StoreFailed("the server is shutting down"))
        else:
            self._queue.put_nowait(_Pending(room, author, body, client_msg_id, name, future))
        return future

    def submit_change(
        self, *, room: str, user: str, kind: str, target: int, body: str = "", moderator: bool
    ) -> asyncio.Future[Stored]:
        """Queue an edit or delete, in order with messages; the future resolves once it is
        committed and published, or fails with ChangeRefused (nothing changed)."""
        future: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        if self._closing or self._task is None:
            future.set_exception(StoreFailed("the server is shutting down"))
        else:
            self._queue.put_nowait(_Change(room, user, kind, target, body, moderator, future))
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
                    await self._write_all(batch)
                    return
                batch.append(item)
            await self._write_all(batch)

    async def _write_all(self, batch: list[_Pending | _Change]) -> None:
        """Messages in batches, each change (rare) in a transaction of its own, in order."""
        for is_change, run in itertools.groupby(batch, key=lambda item: isinstance(item, _Change)):
            items = list(run)
            if not is_change:
                await self._write([p for p in items if isinstance(p, _Pending)])
            for change in items:
                if isinstance(change, _Change):
                    await self._change(change)

    async def _change(self, change: _Change) -> None:
        try:
            connection = await self._connect()
            async with self._room_lock.hold(connection, {change.room}):
                # Its own transaction (check, insert, update), on another connection: the
                # writer's runs each statement in its own. The room lock is held meanwhile.
                async with asyncio.timeout(WRITE_TIMEOUT_SECONDS), self._engine.begin() as tx:
                    stored = await _apply(tx, change, self._outbox is not None)
                if self._outbox is not None:
                    self._outbox.set()
                published = await self._publish([stored])
        except ChangeRefused as exc:
            change.future.set_exception(exc)
            return
        except Exception as exc:
            await self._disconnect(invalidate=True)
            logger.exception("storing a %s failed", change.kind)
            change.future.set_exception(StoreFailed(str(exc)))
            return
        change.future.set_result(Stored(stored, published=published))

    async def _connect(self) -> AsyncConnection:
        if self._connection is None:
            connection = await self._engine.connect()
            if self._outbox is None:  # every batch one statement: no BEGIN and COMMIT
                connection = await connection.execution_options(**AUTOCOMMIT)
            self._connection = connection
        return self._connection

    async def _write(self, batch: list[_Pending]) -> None:
        try:
            connection = await self._connect()
            async with self._room_lock.hold(connection, {p.room for p in batch}):
                # A writer must never hang: a batch that has not committed by then fails
                # (store_failed), and the connection is replaced.
                started = time.perf_counter()
                async with asyncio.timeout(WRITE_TIMEOUT_SECONDS):
                    results = await _insert(connection, batch, self._outbox is not None)
                self._record(batch, results, time.perf_counter() - started)
                if self._outbox is not None:
                    self._outbox.set()
                published = await self._publish([r.message for r in results if not r.duplicate])
        except Exception as exc:
            await self._disconnect(invalidate=True)
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
                pending.future.set_result(result if published else _unpublished(result))

    def _record(self, batch: list[_Pending], results: list[Stored], seconds: float) -> None:
        metrics = self._metrics
        metrics.store_commit_seconds.observe(seconds)
        metrics.store_batch_size.observe(len(batch))
        metrics.messages_stored.inc(sum(not r.duplicate for r in results))

    async def _publish(self, messages: list[StoredMessage]) -> bool:
        try:
            await self._broker.publish_many(
                [(m.room, Frame(stored_frame(m), m.id)) for m in messages]
            )
        except Exception:
            # Stored but not fanned out (the broker is down): workers re-read what they
            # missed when it comes back, and clients can always resume with `since`.
            logger.exception("publishing %d stored message(s) failed", len(messages))
            return False
        return True

    async def _disconnect(self, *, invalidate: bool) -> None:
        """Drop the connection (after a failure: invalidated); the next batch opens one."""
        if self._connection is not None:
            connection, self._connection = self._connection, None
            try:
                if invalidate:
                    await connection.invalidate()
                await connection.close()
            except Exception:
                logger.debug("closing the writer's connection failed", exc_info=True)


def _unpublished(result: Stored) -> Stored:
    return Stored(result.message, result.duplicate, published=False)


async def _insert(connection: AsyncConnection, batch: list[_Pending], outbox: bool) -> list[Stored]:
    """Store batch as one INSERT: one statement, so one transaction, all or nothing (with
    the outbox: one transaction of two statements, the messages and their events).

    Resends resolve to the messages stored before: a later one in the batch to the first,
    and one stored by an earlier batch through the unique (author, room, client_msg_id),
    which refuses the INSERT, after which those are looked up and the rest inserted.
    """
    now = utcnow()
    first: dict[ResendKey, _Pending] = {}  # the batch's first message under each key
    rows = [p for p in batch if p.key is None or first.setdefault(p.key, p) is p]
    known: dict[ResendKey, StoredMessage] = {}
    try:
        ids = await _insert_rows(connection, rows, now, outbox)
    except IntegrityError:
        async with _transaction(connection, outbox):
            known = await _stored_resends(connection, rows)
        if not known:
            raise  # not a resend: something in one of the messages (see _write)
        rows = [p for p in rows if p.key is None or p.key not in known]
        ids = await _insert_rows(connection, rows, now, outbox)
    inserted = {
        id(p): StoredMessage(
            id_, p.room, p.author, p.body, now, p.client_msg_id, author_name=p.name
        )
        for id_, p in zip(ids, rows, strict=True)
    }
    for key, pending in first.items():
        if id(pending) in inserted:
            known[key] = inserted[id(pending)]
    results = []
    for pending in batch:
        message = inserted.get(id(pending))
        if message is not None:
            results.append(Stored(message))
        elif pending.key is not None:  # always, for one not inserted
            results.append(Stored(known[pending.key], duplicate=True))
    return results


def _transaction(connection: AsyncConnection, outbox: bool) -> AbstractAsyncContextManager[Any]:
    """With the outbox, one transaction around the statements inside; without it, none: the
    connection is in AUTOCOMMIT, each statement its own transaction."""
    return connection.begin() if outbox else contextlib.nullcontext()


async def _insert_rows(
    connection: AsyncConnection, rows: list[_Pending], now: datetime, outbox: bool
) -> Sequence[int]:
    """INSERT ... RETURNING the ids, in the order of rows (the insert sentinel's doing);
    with the outbox, their webhook events in the same transaction."""
    if not rows:
        return []
    statement = insert(Message).returning(Message.id, sort_by_parameter_order=True)
    values = [
        {
            "room": p.room,
            "author": p.author,
            "body": p.body,
            "client_msg_id": p.client_msg_id,
            "author_name": p.name,
            "created_at": now,
        }
        for p in rows
    ]
    async with _transaction(connection, outbox):
        ids = (await connection.execute(statement, values)).scalars().all()
        if outbox:  # copied by the database: no parameters to process per row
            new = select(Message.room, Message.id).where(Message.id.in_(ids)).order_by(Message.id)
            await connection.execute(insert(WebhookEvent).from_select(["room", "message_id"], new))
    return ids


ResendKey = tuple[str, str, str]  # (author, room, client_msg_id)


async def _apply(connection: AsyncConnection, change: _Change, outbox: bool) -> StoredMessage:
    """Check and store one edit or delete: the new state of its target, its own row and,
    with the outbox (webhooks on), its webhook event.

    The UPDATE comes first and carries the checks: a transaction that begins by writing
    takes SQLite's write lock at once (one that read first could find it taken since).
    """
    now = utcnow()
    state: dict[str, object] = {"body": change.body}  # a deleted message's body goes too
    if change.kind == "edit":
        state["edited_at"] = now
    else:
        state["deleted_by"] = change.user
    target = (
        update(Message)
        .values(state)
        .where(
            Message.id == change.target,
            Message.room == change.room,  # another room's message is as good as unknown
            MESSAGES_ONLY,
            Message.deleted_by.is_(None),
        )
    )
    own = target.where(Message.author == change.user)
    changed = (await connection.execute(own if not change.moderator else target)).rowcount
    # A delete of someone else's message: a grant by the CLI (read now: the CLI may have
    # made it a moment ago, in another process).
    if not changed and change.kind == "delete" and not change.moderator:
        if await _granted(connection, change.user, change.room):
            changed = (await connection.execute(target)).rowcount
    if not changed:
        raise await _refusal(connection, change)
    row = {"room": change.room, "author": change.user, "body": change.body, "created_at": now}
    statement = insert(Message).returning(Message.id)
    id_ = (
        await connection.execute(
            statement, {**row, "kind": change.kind, "target_id": change.target}
        )
    ).scalar_one()
    if outbox:
        await connection.execute(insert(WebhookEvent).values(room=change.room, message_id=id_))
    return StoredMessage(
        id_, change.room, change.user, change.body, now, kind=change.kind, target_id=change.target
    )


async def _refusal(connection: AsyncConnection, change: _Change) -> ChangeRefused:
    """Why change changed nothing."""
    query = select(Message.room, Message.deleted_by).where(
        Message.id == change.target, MESSAGES_ONLY
    )
    target = (await connection.execute(query)).first()
    if target is None or target.room != change.room:
        return ChangeRefused("unknown_message", f"no message {change.target} in this room")
    if target.deleted_by is not None:
        return ChangeRefused("message_deleted", f"message {change.target} was deleted")
    if change.kind == "edit":
        return ChangeRefused("not_author", "only its author may edit a message")
    return ChangeRefused(
        "not_moderator", "only its author or a moderator of the room may delete it"
    )


async def _granted(connection: AsyncConnection, user: str, room: str) -> bool:
    """Whether the CLI made user a moderator of room (asked in the change's transaction)."""
    grant = select(Moderator.username).where(Moderator.username == user, Moderator.room == room)
    return (await connection.execute(grant)).first() is not None


async def _stored_resends(
    connection: AsyncConnection, batch: list[_Pending]
) -> dict[ResendKey, StoredMessage]:
    """Messages already stored under the batch's (author, room, client_msg_id) keys."""
    keys = {p.key for p in batch if p.key is not None}
    if not keys:
        return {}
    query = select(*_COLUMNS).where(
        tuple_(Message.author, Message.room, Message.client_msg_id).in_(sorted(keys))
    )
    rows = (_stored(row) for row in await connection.execute(query))
    return {(m.author, m.room, m.client_msg_id or ""): m for m in rows}
