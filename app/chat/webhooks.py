"""Webhooks: every stored message, edit and delete POSTed to the host, durably, in room
order, at least once.

The outbox is the webhook_events table, which the message writer fills in the transaction
that stores the messages, or the edit or delete (store.py): an event exists exactly when its
row of the room's sequence does. One
task per worker empties it, never in the writer's or a request's path:

- Only a room's head (its first pending event) is sent; the room's next event waits until
  the host has answered 2xx, which deletes the head. A failing head holds back its own room
  only; other rooms go on. Within a room, events commit in id order (the writer's room
  lock, ordering.py), so the head is always the room's earliest.
- A claim is a lease in the row: one UPDATE moves retry_at past now where it had passed, so
  of several workers one takes a head. The holder of a room's head claims the room's next
  events in the same transaction that deletes the delivered ones, so a room is served by one
  worker at a time. A worker that dies holding a lease frees it after LEASE_SECONDS; those
  events may then arrive twice, which the host drops by event id.
- A failed delivery (refused, timeout, non-2xx) is retried after 1, 2, 4, ... seconds, at
  most CHATROOM_WEBHOOK_RETRY_MAX_SECONDS apart, for as long as it takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import ColumnElement, Select, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.chat.protocol import encode, stored_payload
from app.chat.store import messages_by_id
from app.core.config import Settings
from app.core.metrics import Metrics
from app.core.models import Message, WebhookEvent, utcnow

logger = logging.getLogger("chatroom.webhooks")

# An event's type, by the kind of the row of the room's sequence it announces.
EVENT_TYPES = {"message": "message.created", "edit": "message.updated", "delete": "message.deleted"}
SIGNATURE_HEADER = "X-Chatroom-Signature"
TIMEOUT_SECONDS = 10.0  # one delivery: connecting, sending and the host's answer
LEASE_SECONDS = 60.0  # a claim this old is free for other workers (its holder died)
# Then a busy room lets other rooms have its slot; this plus one delivery stays well within
# the lease, so a live worker's claims never lapse.
ROOM_TURN_SECONDS = LEASE_SECONDS / 3
CHAIN = 64  # a room's events claimed at once
MAX_ROOMS = 16  # rooms one worker delivers to at the same time
POLL_SECONDS = 1.0  # looks for other workers' events and ended backoffs this often
LOOK_PAUSE_SECONDS = 0.05  # and at most this often
STOP_GRACE_SECONDS = 2.0  # a slow host's POST under way at stop is abandoned after this
FIRST_RETRY_SECONDS = 1.0
MAX_ERROR_CHARS = 500

_E = WebhookEvent


@dataclass(frozen=True, slots=True)
class _Claimed:
    id: int
    room: str
    message_id: int
    attempts: int


class WebhookSender:
    """Delivers the outbox to one URL, signing each body with the secret."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        url: str,
        secret: str,
        retry_max_seconds: float,
        metrics: Metrics | None = None,
    ) -> None:
        self.outbox = asyncio.Event()  # set when events may be waiting (the writer sets it)
        self._engine = engine
        self._url = url
        self._secret = secret.encode()
        self._retry_max = retry_max_seconds
        self._failures = (metrics or Metrics()).webhook_failures
        self._rooms: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._client = httpx.AsyncClient(timeout=TIMEOUT_SECONDS)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="chatroom-webhooks")

    async def stop(self) -> None:
        """Stop sending: what was delivered is deleted, what was claimed is released."""
        self._stopping = True
        self.outbox.set()
        if self._task is not None:
            await self._task
        rooms = list(self._rooms.values())
        if rooms:  # each stops after its POST under way...
            _, late = await asyncio.wait(rooms, timeout=STOP_GRACE_SECONDS)
            for task in late:
                task.cancel()  # ...or abandons it, as not delivered
            await asyncio.gather(*late, return_exceptions=True)
        await self._client.aclose()

    async def _run(self) -> None:
        while not self._stopping:
            self.outbox.clear()
            free = MAX_ROOMS - len(self._rooms)
            if free > 0:
                try:
                    heads = await self._claim_heads(free)
                except Exception:
                    logger.exception("webhooks: looking for events to send failed")
                    heads = []
                for head in heads:
                    self._serve(head)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS):
                    await self.outbox.wait()
            # The writer wakes this at every commit: one look per pause, not one per batch.
            await asyncio.sleep(LOOK_PAUSE_SECONDS)

    def _serve(self, head: _Claimed) -> None:
        task = asyncio.create_task(self._serve_room([head]), name=f"chatroom-webhooks-{head.room}")
        self._rooms[head.room] = task

        def done(task: asyncio.Task[None]) -> None:
            del self._rooms[head.room]
            self.outbox.set()  # a slot is free; the room may have more
            if not task.cancelled() and task.exception() is not None:
                logger.error("webhooks: %s stopped", head.room, exc_info=task.exception())

        task.add_done_callback(done)

    async def _claim_heads(self, limit: int) -> list[_Claimed]:
        """Claim up to limit rooms' heads that are due, oldest first, but not rooms served
        here already."""
        now = utcnow()
        due = (
            select(_E.id)
            .where(_E.id.in_(_heads()), _due(now), _E.room.not_in(list(self._rooms)))
            .order_by(_E.id)
            .limit(limit)
        )
        async with self._engine.connect() as connection:
            ids = (await connection.execute(due)).scalars().all()
            await connection.rollback()  # a read; the claim is its own transaction
            if not ids:
                return []
            async with connection.begin():
                return await _claim(connection, select(_E.id).where(_E.id.in_(ids)), now)

    async def _serve_room(self, chain: list[_Claimed]) -> None:
        """Send a room's claimed events in order, then its next ones, for one turn."""
        turn_ends = time.monotonic() + ROOM_TURN_SECONDS
        while chain:
            delivered: list[int] = []
            failure: tuple[_Claimed, str] | None = None
            try:
                failure = await self._send_all(chain, delivered, turn_ends)
            finally:  # cancelled (stop) too: delivered are deleted, the rest released
                more = len(delivered) == len(chain) and not self._over(turn_ends)
                chain = await self._settle(chain, delivered, failure, claim_more=more)

    async def _send_all(
        self, chain: list[_Claimed], delivered: list[int], turn_ends: float
    ) -> tuple[_Claimed, str] | None:
        """POST chain in order until one fails (answered with it and the error), the room's
        turn is over or the sender stops; appends each delivered event's id to delivered."""
        async with self._engine.connect() as connection:
            messages = await messages_by_id(connection, [e.message_id for e in chain])
        for event in chain:
            if self._over(turn_ends):
                return None
            message = messages.get(event.message_id)
            if message is not None:  # else it is gone, and so is the event
                body = encode(
                    {
                        "id": event.id,
                        "type": EVENT_TYPES[message.kind],
                        "room": event.room,
                        "message": stored_payload(message),
                    }
                ).encode()
                error = await self._post(body)
                if error is not None:
                    self._failures.inc()
                    logger.warning("webhooks: event %d of %s: %s", event.id, event.room, error)
                    return event, error
            delivered.append(event.id)
        return None

    def _over(self, turn_ends: float) -> bool:
        return self._stopping or time.monotonic() > turn_ends

    async def _post(self, body: bytes) -> str | None:
        """Send one event; None when the host took it (2xx), else what went wrong."""
        headers = {"content-type": "application/json", SIGNATURE_HEADER: sign(self._secret, body)}
        try:
            response = await self._client.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        if not response.is_success:
            return f"HTTP {response.status_code}"
        return None

    async def _settle(
        self,
        chain: list[_Claimed],
        delivered: list[int],
        failure: tuple[_Claimed, str] | None,
        *,
        claim_more: bool,
    ) -> list[_Claimed]:
        """Record one chain's outcome in one transaction; with claim_more, claim the room's
        next events in it too (so no other worker can see the room's head free between)."""
        now = utcnow()
        settled = {*delivered, failure[0].id} if failure else set(delivered)
        rest = [e.id for e in chain if e.id not in settled]
        async with self._engine.begin() as connection:
            if delivered:
                await connection.execute(delete(_E).where(_E.id.in_(delivered)))
            if failure is not None:
                event, error = failure
                backoff = min(self._retry_max, FIRST_RETRY_SECONDS * 2 ** min(event.attempts, 30))
                await connection.execute(
                    update(_E)
                    .where(_E.id == event.id)
                    .values(
                        attempts=_E.attempts + 1,
                        retry_at=now + timedelta(seconds=backoff),
                        last_error=error,
                        failed_at=now,
                    )
                )
            if rest:
                await connection.execute(update(_E).where(_E.id.in_(rest)).values(retry_at=None))
            if not claim_more:
                return []
            room = chain[0].room
            first = select(_E.id).where(_E.room == room).order_by(_E.id).limit(CHAIN)
            return await _claim(connection, first, now)


def create_webhook_sender(
    settings: Settings, engine: AsyncEngine, metrics: Metrics | None = None
) -> WebhookSender | None:
    """The sender the settings ask for; None when webhooks are off."""
    if settings.webhook_url is None or settings.webhook_secret is None:
        return None
    return WebhookSender(
        engine,
        url=str(settings.webhook_url),
        secret=settings.webhook_secret.get_secret_value(),
        retry_max_seconds=settings.webhook_retry_max_seconds,
        metrics=metrics,
    )


def sign(secret: bytes, body: bytes) -> str:
    """The X-Chatroom-Signature of body: HMAC-SHA256 of the raw bytes, in hex."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def _due(now: datetime) -> ColumnElement[bool]:
    """Neither claimed nor waiting out a backoff."""
    return or_(_E.retry_at.is_(None), _E.retry_at <= now)


def _heads() -> Select[int | None]:
    """Each room's first pending event id: a loose index scan, one (room, id) index lookup
    per room, where GROUP BY room would read the whole outbox (a long outage's backlog)."""
    rooms = select(func.min(_E.room).label("room")).cte("outbox_rooms", recursive=True)
    following = select(func.min(_E.room)).where(_E.room > rooms.c.room).scalar_subquery()
    rooms = rooms.union_all(select(following).where(rooms.c.room.is_not(None)))
    head = select(func.min(_E.id)).where(_E.room == rooms.c.room).scalar_subquery()
    return select(head).where(rooms.c.room.is_not(None))


async def _claim(connection: AsyncConnection, ids: Select[int], now: datetime) -> list[_Claimed]:
    """Lease those of ids that no one holds; answers them in id order."""
    lease = now + timedelta(seconds=LEASE_SECONDS)
    claim = (
        update(_E)
        .where(_E.id.in_(ids), _due(now))
        .values(retry_at=lease)
        .returning(_E.id, _E.room, _E.message_id, _E.attempts)
    )
    return sorted((_Claimed(*row) for row in await connection.execute(claim)), key=lambda e: e.id)


@dataclass(frozen=True, slots=True)
class Backlog:
    events: int
    oldest_at: datetime | None  # when the first pending event's message was stored
    last_error: str | None  # the latest failure among pending events, with where and when


async def backlog_count(engine: AsyncEngine) -> int:
    """Events not yet delivered (for a metric)."""
    async with engine.connect() as connection:
        return (await connection.execute(select(func.count()).select_from(_E))).scalar_one()


async def backlog(engine: AsyncEngine) -> Backlog:
    """The outbox as `chatroom webhooks` shows it."""
    oldest = (
        select(Message.created_at).join(_E, _E.message_id == Message.id).order_by(_E.id).limit(1)
    )
    failed = (
        select(_E.id, _E.room, _E.attempts, _E.failed_at, _E.last_error, _E.retry_at)
        .where(_E.last_error.is_not(None))
        .order_by(_E.failed_at.desc())
        .limit(1)
    )
    async with engine.connect() as connection:
        oldest_at = (await connection.execute(oldest)).scalar_one_or_none()
        row = (await connection.execute(failed)).one_or_none()
    last_error = None
    if row is not None:
        id_, room, attempts, failed_at, error, retry_at = row
        retry = f"{retry_at:%H:%M:%S} UTC" if retry_at else "now"
        last_error = (
            f"event {id_} of {room}, attempt {attempts} at {failed_at:%Y-%m-%d %H:%M:%S} UTC: "
            f"{error}; next attempt {retry}"
        )
    return Backlog(await backlog_count(engine), oldest_at, last_error)
