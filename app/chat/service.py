"""The life of one socket in a room: replay, presence, receiving and storing messages.

It wires the hub (local fan-out), the broker (fan-out across processes) and the store
(persistence) together; routes only authenticate and hand the accepted socket to serve().
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.types import Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from app.chat.broker import Broker, MemoryBroker
from app.chat.hub import Connection, Frame, Hub
from app.chat.ordering import create_room_lock
from app.chat.presence import Presence
from app.chat.protocol import (
    FrameError,
    encode,
    error_frame,
    history_frame,
    message_payload,
    parse_client_frame,
    presence_frame,
    welcome_frame,
)
from app.chat.ratelimit import TokenBucket
from app.chat.recent import RecentHistory
from app.chat.store import MessageWriter, Stored, StoredMessage, StoreFailed, history_page
from app.core.config import Settings
from app.wire import prepared_writer

logger = logging.getLogger("chatroom.chat")

SINCE_REPLAY_LIMIT = 1000  # messages replayed for ?since=; beyond it the client pages by REST
MAX_IN_FLIGHT = 16  # a connection's messages awaiting commit before it stops reading
# A broker channel no room can have ("!" is not allowed in item ids): revoked usernames.
REVOCATIONS = "!revoked"
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TIMEOUT_SECONDS = 5.0  # how long a close handshake may take before we move on
EXPIRY_SWEEP_SECONDS = 1.0  # a socket closes at most this long after its token expires


class ChatService:
    """Rooms of this process, connected through a broker, backed by the message store."""

    def __init__(
        self,
        *,
        settings: Settings,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        broker: Broker,
        presence: Presence,
    ) -> None:
        self.settings = settings
        self.hub = Hub()
        self.broker = broker
        self.presence = presence
        self.sessions = sessions
        room_lock = create_room_lock(
            settings.database_url, shared=not isinstance(broker, MemoryBroker)
        )
        self.writer = MessageWriter(engine, self._publish_committed, room_lock)
        self.recent = RecentHistory(sessions, limit=settings.history_limit)
        # Per user, across their sockets in this process.
        self._sockets_of: Counter[str] = Counter()
        self._buckets: dict[str, TokenBucket] = {}
        self._serving = 0  # sockets being served; _all_done is set when none is
        self._all_done = asyncio.Event()
        self._all_done.set()
        self._expiry: asyncio.Task[None] | None = None
        self._stopped = False
        self._revoked_callbacks: list[Callable[[str], None]] = []

    async def start(self) -> None:
        await self.broker.start(self._deliver, self._catch_up)
        await self.presence.start(self.hub.members, self._announce)
        self.writer.start()
        self._expiry = asyncio.create_task(self._expire_tokens(), name="chatroom-token-expiry")

    async def stop(self) -> None:
        """Finish in-flight writes and broadcasts, then close every socket with 1001."""
        if self._stopped:
            return
        self._stopped = True
        await self.writer.stop()
        self._abort_all(lambda _: True, CLOSE_GOING_AWAY, "server shutting down")
        if self._expiry is not None:
            self._expiry.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_done.wait(), CLOSE_TIMEOUT_SECONDS + 1)
        await self.presence.stop()
        await self.broker.stop()

    def on_revoked(self, callback: Callable[[str], None]) -> None:
        """Call callback(user) whenever a user's credentials are revoked, on any worker."""
        self._revoked_callbacks.append(callback)

    async def revoke(self, user: str) -> None:
        """The user's tokens were revoked: close their sockets on every worker."""
        self._revoked(user)  # here at once; the broker's echo of it changes nothing
        try:
            await self.broker.publish(REVOCATIONS, Frame(user))
        except Exception as exc:  # other workers' caches still expire within seconds
            logger.warning("could not relay the revocation of %s: %s", user, exc)

    def _revoked(self, user: str) -> None:
        for callback in self._revoked_callbacks:
            callback(user)
        self._abort_all(lambda c: c.user == user, CLOSE_POLICY_VIOLATION, "password changed")

    def _abort_all(self, which: Callable[[Connection], bool], code: int, reason: str) -> None:
        for room in self.hub.rooms:
            for connection in self.hub.connections(room):
                if which(connection):
                    connection.abort(code, reason)

    async def _expire_tokens(self) -> None:
        """Close sockets whose token has expired: one sweep a second for all of them.

        Long-lived sockets must not outlive the credentials that opened them. A timer per
        socket would be exact, but costs more memory per idle socket than a second is worth.
        """
        while True:
            await asyncio.sleep(EXPIRY_SWEEP_SECONDS)
            self._abort_all(
                functools.partial(_expired, now=time.time()),
                CLOSE_POLICY_VIOLATION,
                "token expired",
            )

    def _deliver(self, frames: Sequence[tuple[str, Frame]]) -> None:
        """Every frame the broker brings: keep the replays current, then fan out."""
        messages: list[tuple[str, Frame]] = []
        for room, frame in frames:
            if room == REVOCATIONS:
                self.hub.deliver_many(messages)  # what came before it, first
                messages = []
                self._revoked(frame.text)
            else:
                self.recent.note(room, frame)
                messages.append((room, frame))
        self.hub.deliver_many(messages)

    async def _catch_up(self) -> None:
        """After a broker outage: hand each local room what was stored meanwhile."""
        self.recent.forget()
        for room in self.hub.rooms:
            after = self.hub.resume_point(room)
            if after is None:
                continue
            messages, more = await history_page(
                self.sessions, room=room, limit=SINCE_REPLAY_LIMIT, after=after
            )
            if more:
                logger.warning(
                    "%s: more than %d missed; clients resume with since", room, len(messages)
                )
            self.hub.deliver_many(
                [(room, Frame(encode(message_payload(m)), m.id)) for m in messages]
            )

    async def _announce(self, kind: str, room: str, user: str) -> None:
        try:
            await self.broker.publish(room, Frame(presence_frame(kind, room=room, user=user)))
        except Exception as exc:  # the broker is down; presence heals when it is back
            logger.warning("could not announce %s of %s in %s: %s", kind, user, room, exc)

    async def _presence(
        self, change: Callable[[str, str], Awaitable[bool]], room: str, user: str
    ) -> bool:
        try:
            return await change(room, user)
        except Exception as exc:
            logger.warning("presence of %s in %s not recorded: %s", user, room, exc)
            return False

    async def _online(self, room: str, user: str) -> list[str]:
        try:
            return await self.presence.online(room)
        except Exception as exc:
            logger.warning("presence of %s unavailable: %s", room, exc)
            return sorted({c.user for c in self.hub.connections(room)} | {user})

    async def _publish_committed(self, messages: Sequence[StoredMessage]) -> None:
        try:
            await self.broker.publish_many(
                [(m.room, Frame(encode(message_payload(m)), m.id)) for m in messages]
            )
        except Exception:
            self.recent.forget({m.room for m in messages})  # they will miss these
            raise

    async def serve(
        self,
        websocket: WebSocket,
        send: Send,
        *,
        user: str,
        room: str,
        since: int | None,
        expires_at: float | None = None,
    ) -> None:
        """Run an accepted socket until either side ends it (or its token expires).

        send: the socket's ASGI send, which fan-out calls directly.

        One coroutine for the whole life of the socket, receiving in the socket's own task:
        with thousands of idle sockets, every frame and task kept per socket is memory.
        """
        limit = self.settings.max_connections_per_user
        if self._stopped:
            await websocket.close(CLOSE_GOING_AWAY, "server shutting down")
            return
        if limit and self._sockets_of[user] >= limit:
            await websocket.close(
                CLOSE_POLICY_VIOLATION, f"too many connections: at most {limit} per user"
            )
            return
        self._sockets_of[user] += 1
        self._serving += 1
        self._all_done.clear()
        connection = Connection(
            user=user,
            room=room,
            send=send,
            max_frames=self.settings.send_buffer_frames,
            max_bytes=self.settings.send_buffer_bytes,
            expires_at=expires_at,
            write_prepared=prepared_writer(websocket.scope),
        )
        # Registered before the history query: whatever is committed from now on is queued,
        # and start() drops what the replay already held, so nothing is missed or doubled.
        first_here = self.hub.add(connection)
        try:
            await self._join(websocket, connection, since, announce=first_here)
            # From here an abort (overflow, revocation, expiry, shutdown) cancels this task
            # in its receive; no other task watches for it (see Connection.abort).
            connection.owner = asyncio.current_task()
            if not connection.aborted:
                await self._receive(websocket, connection)
        except asyncio.CancelledError:
            if not connection.interrupted_by_abort():
                raise
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the peer left, or the socket broke under us
        finally:
            connection.owner = None
            if self.hub.remove(connection) and await self._presence(
                self.presence.leave, room, user
            ):
                await self._announce("leave", room, user)
            if connection.close_code is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        websocket.close(connection.close_code, connection.close_reason),
                        CLOSE_TIMEOUT_SECONDS,
                    )
            self._sockets_of[user] -= 1
            if not self._sockets_of[user]:
                del self._sockets_of[user]
                self._buckets.pop(user, None)
            self._serving -= 1
            if not self._serving:
                self._all_done.set()

    async def _join(
        self, websocket: WebSocket, connection: Connection, since: int | None, *, announce: bool
    ) -> None:
        """Welcome, history and the join notice; then the connection starts sending.

        Its own coroutine, so that the replay (up to SINCE_REPLAY_LIMIT messages for a
        resume) and the member list are dropped once sent, not kept for the socket's life.
        """
        room, user = connection.room, connection.user
        first = announce and await self._presence(self.presence.join, room, user)
        history, last_id = await self._replay(room, since)
        online = await self._online(room, user)
        await websocket.send_text(welcome_frame(user=user, room=room, online=online))
        await websocket.send_text(history)
        if first:
            await self._announce("join", room, user)
        connection.start(skip_through=last_id or since or 0)

    async def _replay(self, room: str, since: int | None) -> tuple[str, int]:
        """The history frame for a joining socket, and the last id it holds (0: none)."""
        if since is None:
            return await self.recent.replay(room)
        messages, has_more = await history_page(
            self.sessions, room=room, limit=SINCE_REPLAY_LIMIT, after=since
        )
        frame = history_frame(room=room, messages=messages, has_more=has_more)
        return frame, messages[-1].id if messages else 0

    async def _receive(self, websocket: WebSocket, connection: Connection) -> None:
        # The sender's messages awaiting their commit; each leaves the list when done.
        in_flight: list[asyncio.Future[Stored]] = []
        bucket = self._buckets.setdefault(
            connection.user, TokenBucket(self.settings.rate_limit, self.settings.rate_burst)
        )
        while True:
            event = await websocket.receive()
            if event["type"] == "websocket.disconnect":
                return
            future = self._take(connection, bucket, event.get("text"))
            del event  # an idle socket must not keep its last frame (up to 64 KiB) alive
            if future is not None:
                in_flight.append(future)
                future.add_done_callback(functools.partial(_forget, in_flight))
                del future
            while len(in_flight) >= MAX_IN_FLIGHT:  # stop reading until the oldest is stored
                oldest = in_flight[0]
                with contextlib.suppress(StoreFailed):
                    await oldest
                _forget(in_flight, oldest)  # now: its callback may not have run yet
                del oldest

    def _take(
        self, connection: Connection, bucket: TokenBucket, text: str | None
    ) -> asyncio.Future[Stored] | None:
        """Parse, rate-limit and submit one frame; refusals are answered on the socket."""
        settings = self.settings
        if text is None:
            connection.offer(
                Frame(error_frame("binary_unsupported", "send text frames, not binary"))
            )
            return None
        try:
            message = parse_client_frame(text, max_chars=settings.max_message_chars)
        except FrameError as exc:
            connection.offer(Frame(error_frame(exc.code, exc.detail, exc.client_msg_id)))
            return None
        wait = bucket.take()
        if wait:
            connection.offer(
                Frame(
                    error_frame(
                        "rate_limited",
                        f"too many messages: at most {settings.rate_limit:g} a second",
                        message.client_msg_id,
                        retry_after=round(wait, 3),
                    )
                )
            )
            return None
        future = self.writer.submit(
            room=connection.room,
            author=connection.user,
            body=message.body,
            client_msg_id=message.client_msg_id,
        )
        future.add_done_callback(
            functools.partial(_answer_sender, connection=connection, cid=message.client_msg_id)
        )
        return future


def _expired(connection: Connection, *, now: float) -> bool:
    return connection.expires_at is not None and connection.expires_at <= now


def _forget(in_flight: list[asyncio.Future[Stored]], future: asyncio.Future[Stored]) -> None:
    with contextlib.suppress(ValueError):
        in_flight.remove(future)


def _answer_sender(
    future: asyncio.Future[Stored], *, connection: Connection, cid: str | None
) -> None:
    """Tell the sender what became of its message when the broadcast does not."""
    if future.cancelled():
        return
    if isinstance(future.exception(), StoreFailed):
        connection.offer(
            Frame(
                error_frame("store_failed", "the message could not be stored; send it again", cid)
            )
        )
        return
    stored = future.result()
    if stored.duplicate:
        # A resend: answer with the stored message, to the sender alone. No message_id, so
        # the replay de-duplication does not drop it.
        connection.offer(Frame(encode(message_payload(stored.message))))
