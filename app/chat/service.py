"""The life of one socket in a room: replay, presence, receiving and storing messages.

A message goes socket -> parse -> store (commit) -> broker -> hub -> each connection:
_receive parses it and submits it to the writer, the writer commits and publishes it, and
the broker hands it to deliver(), which fans it out through the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.status import WS_1001_GOING_AWAY, WS_1008_POLICY_VIOLATION
from starlette.websockets import WebSocket, WebSocketDisconnect

from app.chat.broker import Broker, MemoryBroker
from app.chat.hub import Connection, Frame, Hub
from app.chat.ordering import create_room_lock
from app.chat.presence import Presence
from app.chat.protocol import (
    ClientChange,
    ClientMessage,
    ClientRead,
    ClientTyping,
    FrameError,
    error_frame,
    history_budget,
    history_frame,
    history_space,
    message_frame,
    parse_client_frame,
    parse_message,
    presence_frame,
    read_frame,
    stored_frame,
    welcome_frame,
)
from app.chat.ratelimit import RateLimited, TokenBucket
from app.chat.reads import UnknownMessage, mark_read
from app.chat.recent import RecentHistory
from app.chat.store import (
    ChangeRefused,
    MessageWriter,
    Stored,
    StoreFailed,
    frames_after,
    history_page,
)
from app.core.config import Settings
from app.core.metrics import Metrics
from app.core.revocations import Revocations
from app.core.security import TokenClaims
from app.wire import send_texts

logger = logging.getLogger("chatroom.chat")

SINCE_REPLAY_LIMIT = 1000  # messages replayed for ?since=; beyond it the client pages by REST
MAX_IN_FLIGHT = 16  # a connection's messages awaiting commit before it stops reading
CLOSE_TIMEOUT_SECONDS = 5.0  # how long a close handshake may take before we move on
# A socket closes at most this long after its token expires, or is revoked anywhere.
EXPIRY_SWEEP_SECONDS = 1.0
# A user's typing notices passed on per room: one at most this often, from all their sockets
# in this process together (more are dropped silently).
TYPING_INTERVAL_SECONDS = 2.0


class ChatService:
    """Rooms of this process, connected through a broker, backed by the message store."""

    def __init__(
        self,
        *,
        settings: Settings,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        hub: Hub,
        broker: Broker,
        presence: Presence,
        revocations: Revocations,
        metrics: Metrics,
        outbox: asyncio.Event | None = None,
    ) -> None:
        """outbox: webhooks are on; the writer queues their events (see MessageWriter)."""
        self.settings = settings
        self.metrics = metrics
        self.revocations = revocations
        self.hub = hub
        self.broker = broker
        self.presence = presence
        self.sessions = sessions
        room_lock = create_room_lock(
            settings.database_url, shared=not isinstance(broker, MemoryBroker)
        )
        self.writer = MessageWriter(engine, broker, room_lock, outbox=outbox, metrics=metrics)
        # The most a history frame takes: it counts against the socket's send buffer.
        self.history_bytes = history_budget(settings.send_buffer_bytes)
        self.recent = RecentHistory(
            sessions,
            limit=settings.history_limit,
            frame_bytes=self.history_bytes,
            max_bytes=settings.replay_cache_bytes,
        )
        self._sockets_of: Counter[str] = Counter()  # per user, across rooms, in this process
        self._buckets: dict[str, TokenBucket] = {}
        # (user, room) -> when a typing notice was last passed on; outlives the socket, so
        # that reconnecting does not reset it.
        self._typing: dict[tuple[str, str], float] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # typing and read work under way
        self._serving = 0  # sockets being served; _all_done is set when none is
        self._all_done = asyncio.Event()
        self._all_done.set()
        self._stopped = False
        self._expiry: asyncio.Task[None] | None = None
        self._revocations_failing = False

    async def start(self) -> None:
        await self.revocations.refresh()
        await self.broker.start(self.deliver, self._catch_up)
        await self.presence.start(self._announce)
        self.writer.start()
        self._expiry = asyncio.create_task(self._sweep(), name="chatroom-sweep")

    async def stop(self) -> None:
        """Finish in-flight writes and broadcasts, then close every socket with 1001."""
        if self._stopped:
            return
        self._stopped = True
        if self._expiry is not None:
            self._expiry.cancel()
        await self.writer.stop()
        for connection in self.hub.connections():
            connection.abort(WS_1001_GOING_AWAY, "server shutting down")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_done.wait(), CLOSE_TIMEOUT_SECONDS + 1)
        # Read markers being written, typing notices being published: before the broker
        # and the database go.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.presence.stop()
        await self.broker.stop()

    async def check_credentials(self) -> None:
        """Learn the revocations recorded since the last check, by any process, and close
        each socket whose token has expired or is revoked."""
        try:
            await self.revocations.refresh()
        except Exception as exc:  # the database is away: expiry still closes sockets
            if not self._revocations_failing:
                logger.warning("could not read revocations: %s", exc)
            self._revocations_failing = True
        else:
            self._revocations_failing = False
        now = time.time()
        for connection in self.hub.connections():
            if connection.token.expires_at <= now:
                connection.abort(WS_1008_POLICY_VIOLATION, "token expired")
            elif reason := self.revocations.refusal(connection.token):
                connection.abort(WS_1008_POLICY_VIOLATION, reason)

    async def _sweep(self) -> None:
        """Check every socket's credentials, and forget refilled rate-limit buckets: one
        sweep a second for all of them.

        A long-lived socket must not outlive the credentials that opened it; a timer per
        socket would be exact, but costs more memory per idle socket than a second is worth.
        """
        while True:
            await asyncio.sleep(EXPIRY_SWEEP_SECONDS)
            await self.check_credentials()
            # A rate-limit bucket outlives its user's sockets until it has refilled:
            # reconnecting must not reset the limit.
            for user in [u for u, b in self._buckets.items() if u not in self._sockets_of]:
                if self._buckets[user].full():
                    del self._buckets[user]
            now = time.monotonic()
            for key in [k for k, t in self._typing.items() if now - t >= TYPING_INTERVAL_SECONDS]:
                del self._typing[key]

    def deliver(self, frames: Sequence[tuple[str, Frame]]) -> None:
        """Every frame the broker brings, in order: keep the replays current, fan out."""
        by_room: dict[str, list[Frame]] = {}  # a room's frames go to each socket together
        for room, frame in frames:
            self.recent.note(room, frame)
            by_room.setdefault(room, []).append(frame)
        for room, of_room in by_room.items():
            self.hub.deliver(room, of_room)

    async def _catch_up(self) -> None:
        """After a broker outage: hand each local room what was stored meanwhile."""
        self.recent.forget()
        for room in self.hub.rooms:
            after = self.hub.resume_point(room)
            if after is None:
                continue
            messages, more = await history_page(
                self.sessions, room=room, limit=SINCE_REPLAY_LIMIT, after=after, changes=True
            )
            if more:
                logger.warning(
                    "%s: more than %d missed; clients resume with since", room, len(messages)
                )
            self.hub.deliver(room, [Frame(stored_frame(m), m.id) for m in messages])

    async def _announce(self, kind: str, room: str, user: str) -> None:
        # If the broker is down, presence heals when it is back.
        await self._publish(room, Frame(presence_frame(kind, room=room, user=user)))

    async def _publish(self, room: str, frame: Frame) -> None:
        """A frame that is not stored (presence, typing, read markers): lost if the broker
        is down, as it says nothing a client cannot do without."""
        try:
            await self.broker.publish_many([(room, frame)])
        except Exception as exc:
            logger.warning("could not publish to %s: %s (%s)", room, exc, frame.text)

    async def _presence(
        self, change: Callable[[str, str], Awaitable[bool]], room: str, user: str
    ) -> bool:
        try:
            return await change(room, user)
        except Exception as exc:
            logger.warning("presence of %s in %s not recorded: %s", user, room, exc)
            return False

    async def _online(self, room: str) -> list[str]:
        try:
            return await self.presence.online(room)
        except Exception as exc:
            logger.warning("presence of %s unavailable: %s", room, exc)
            return self.hub.users(room)

    async def serve(
        self,
        websocket: WebSocket,
        *,
        user: str,
        room: str,
        since: int | None,
        token: TokenClaims,
        moderator: bool = False,
    ) -> None:
        """Run an accepted socket until either side ends it, or its token expires or is
        revoked. moderator: the welcome offers delete on everyone's messages (the writer
        decides when one arrives)."""
        limit = self.settings.max_connections_per_user
        if self._stopped:
            await websocket.close(WS_1001_GOING_AWAY, "server shutting down")
            return
        if limit and self._sockets_of[user] >= limit:
            self.metrics.refusals.labels("connection_limit").inc()
            await websocket.close(
                WS_1008_POLICY_VIOLATION, f"too many connections: at most {limit} per user"
            )
            return
        self._sockets_of[user] += 1
        self._serving += 1
        self._all_done.clear()
        connection = Connection(
            user=user,
            room=room,
            max_frames=self.settings.send_buffer_frames,
            max_bytes=self.settings.send_buffer_bytes,
            token=token,
        )
        # Registered before the history query: whatever is committed from now on is queued,
        # and the sender skips what the replay already held, so nothing is missed or doubled.
        first_here = self.hub.add(connection)
        peer_code = 1006  # how it ended when chatroom did not close it; 1006: it failed under us
        try:
            skip_through = await self._join(
                websocket, connection, since, announce=first_here, moderator=moderator
            )
            # Receive until the peer leaves; meanwhile the hub sends. An abort by the hub
            # (overflow, revocation, expiry, shutdown) ends the receiving through this
            # timeout, which has no deadline until then.
            async with asyncio.timeout(None) as receiving:
                if connection.start(websocket, skip_through=skip_through, until=receiving):
                    peer_code = await self._receive(websocket, connection)
        except TimeoutError:
            pass  # aborted: connection.close_code says how to close
        except WebSocketDisconnect as exc:
            peer_code = exc.code  # the peer left
        except (RuntimeError, OSError):
            pass  # the socket broke under us
        finally:
            connection.stop()
            _count_close(self.metrics, connection.close_code or peer_code)
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
            self._serving -= 1
            if not self._serving:
                self._all_done.set()

    async def _join(
        self,
        websocket: WebSocket,
        connection: Connection,
        since: int | None,
        *,
        announce: bool,
        moderator: bool,
    ) -> int:
        """Welcome, history and the join notice; answers the last id the replay held."""
        room, user = connection.room, connection.user
        first = announce and await self._presence(self.presence.join, room, user)
        if since is None:
            history, last_id = await self.recent.replay(room)
        else:
            # The oldest missed messages; has_more sends the client to REST for the rest.
            texts, last_id, has_more = await frames_after(
                self.sessions,
                room=room,
                after=since,
                limit=SINCE_REPLAY_LIMIT,
                space=history_space(room, self.history_bytes),
            )
            history = history_frame(room, texts, has_more)
        welcome = welcome_frame(
            user=user,
            room=room,
            online=await self._online(room),
            moderator=moderator,
        )
        # One write; the history frame is the room's, framed once for every joiner.
        await send_texts(websocket, [welcome, history])
        if first:
            await self._announce("join", room, user)
        return last_id

    async def post(
        self,
        *,
        room: str,
        user: str,
        body: object,
        client_msg_id: object = None,
        name: str | None = None,
    ) -> Stored:
        """Store and broadcast a message sent over REST, as if it came over a socket.

        The same body rules, rate bucket and writer as a socket's messages. Raises
        FrameError (invalid), RateLimited or StoreFailed; a resend answers the stored one.
        """
        message = parse_message(body, client_msg_id, max_chars=self.settings.max_message_chars)
        wait = self._bucket(user).take()
        if wait:
            self.metrics.refusals.labels("rate_limit").inc()
            raise RateLimited(self._rate_detail, wait)
        stored = await self.writer.submit(
            room=room,
            author=user,
            body=message.body,
            client_msg_id=message.client_msg_id,
            name=name,
        )
        if not stored.published:
            self.recent.forget({room})  # as for a socket's message (_answer_sender)
        return stored

    def _bucket(self, user: str) -> TokenBucket:
        """The user's send-rate bucket, shared by their sockets and REST posts."""
        bucket = self._buckets.get(user)
        if bucket is None:
            bucket = TokenBucket(self.settings.rate_limit, self.settings.rate_burst)
            self._buckets[user] = bucket
        return bucket

    @property
    def _rate_detail(self) -> str:
        return f"too many messages: at most {self.settings.rate_limit:g} a second"

    async def _receive(self, websocket: WebSocket, connection: Connection) -> int:
        """Take the peer's messages until it leaves; answers its close code."""
        bucket = self._bucket(connection.user)
        in_flight: list[asyncio.Future[Any]] = []  # its messages awaiting their commit, and
        # its typing and read frames under way
        while True:
            if len(in_flight) >= MAX_IN_FLIGHT:  # stop reading until the oldest is stored
                await asyncio.wait(in_flight[:1])
            in_flight = [future for future in in_flight if not future.done()]
            event = await websocket.receive()
            if event["type"] == "websocket.disconnect":
                return int(event.get("code", 1005))
            future = self._take(connection, bucket, event.get("text"))
            if future is not None:
                in_flight.append(future)

    def _take(
        self, connection: Connection, bucket: TokenBucket, text: str | None
    ) -> asyncio.Future[Any] | None:
        """Parse, rate-limit and submit one frame; refusals are answered on the socket."""
        settings = self.settings
        if text is None:
            _tell(connection, error_frame("binary_unsupported", "send text frames, not binary"))
            return None
        try:
            message = parse_client_frame(text, max_chars=settings.max_message_chars)
        except FrameError as exc:
            _tell(connection, error_frame(exc.code, exc.detail, exc.client_msg_id))
            return None
        if isinstance(message, ClientTyping):
            return self._typing_notice(connection)
        wait = bucket.take()
        if wait:
            self.metrics.refusals.labels("rate_limit").inc()
            # A refused read names its id, so that a client tells it from a refused message.
            about = (
                {"client_msg_id": message.client_msg_id}
                if isinstance(message, ClientMessage)
                else {"id": message.id}
            )
            frame = error_frame(
                "rate_limited", self._rate_detail, retry_after=round(wait, 3), **about
            )
            _tell(connection, frame)
            return None
        if isinstance(message, ClientChange):
            return self._submit_change(connection, message)
        if isinstance(message, ClientRead):  # a write, like a message: rate-limited as one
            return self._spawn(self._read(connection, message.id))
        future = self.writer.submit(
            room=connection.room,
            author=connection.user,
            body=message.body,
            client_msg_id=message.client_msg_id,
            name=connection.token.display_name,
        )
        future.add_done_callback(
            lambda f: self._answer_sender(f, connection, message.client_msg_id)
        )
        return future

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)  # a strong reference until it is done
        task.add_done_callback(self._tasks.discard)
        return task

    def _typing_notice(self, connection: Connection) -> asyncio.Task[None] | None:
        """Pass typing on to the others in the room, at most once per interval per user and
        room; no socket of the typing user gets it, whichever worker it is on."""
        user, room = connection.user, connection.room
        now = time.monotonic()
        if now - self._typing.get((user, room), -TYPING_INTERVAL_SECONDS) < TYPING_INTERVAL_SECONDS:
            return None
        self._typing[user, room] = now
        frame = Frame(presence_frame("typing", room=room, user=user), not_to=user)
        return self._spawn(self._publish(room, frame))

    async def _read(self, connection: Connection, message_id: int) -> None:
        """Move the user's read marker forward; their sockets in the room hear of it."""
        user, room = connection.user, connection.room
        try:
            moved = await mark_read(self.sessions, user=user, room=room, message_id=message_id)
        except UnknownMessage:
            detail = f"no message {message_id} in this room"
            _tell(connection, error_frame("unknown_message", detail, id=message_id))
            return
        except Exception as exc:
            logger.warning("read marker of %s in %s not stored: %s", user, room, exc)
            detail = "the read marker could not be stored; send it again"
            _tell(connection, error_frame("store_failed", detail, id=message_id))
            return
        if moved:
            await self._publish(
                room, Frame(read_frame(room=room, message_id=message_id), only_to=user)
            )

    def _answer_sender(
        self, future: asyncio.Future[Stored], connection: Connection, cid: str | None
    ) -> None:
        """Tell the sender what became of its message when the broadcast does not."""
        if future.cancelled():
            return
        if isinstance(future.exception(), StoreFailed):
            detail = "the message could not be stored; send it again"
            _tell(connection, error_frame("store_failed", detail, cid))
            return
        stored = future.result()
        if stored.duplicate:
            # A resend: answer with the stored message, to the sender alone. No message_id, so
            # the replay de-duplication does not drop it.
            _tell(connection, message_frame(stored.message))
        elif not stored.published:
            # The broker refused it: no one else got it (they catch up from the database), and
            # the room's replay cache missed it.
            self.recent.forget({connection.room})
            _tell(connection, message_frame(stored.message))

    def _submit_change(
        self, connection: Connection, change: ClientChange
    ) -> asyncio.Future[Stored]:
        future = self.writer.submit_change(
            room=connection.room,
            user=connection.user,
            kind=change.kind,
            target=change.id,
            body=change.body,
            moderator=connection.token.moderates(connection.room),
        )
        future.add_done_callback(lambda f: self._answer_changer(f, connection, change.id))
        return future

    def _answer_changer(
        self, future: asyncio.Future[Stored], connection: Connection, target: int
    ) -> None:
        """Tell the sender of an edit or delete what the broadcast does not: a refusal, a
        failure, or the change itself when the broker did not take it."""
        if future.cancelled():
            return
        exc = future.exception()
        if isinstance(exc, ChangeRefused):
            _tell(connection, error_frame(exc.code, exc.detail, id=target))
        elif isinstance(exc, StoreFailed):
            detail = "the change could not be stored; try again"
            _tell(connection, error_frame("store_failed", detail, id=target))
        elif exc is None and not future.result().published:
            self.recent.forget({connection.room})
            _tell(connection, stored_frame(future.result().message))


def _count_close(metrics: Metrics, code: int) -> None:
    # A peer's own codes (3000-4999) are counted together: the label's values stay few.
    metrics.socket_closes.labels(str(code) if code < 3000 else "other").inc()


def _tell(connection: Connection, text: str) -> None:
    """A frame for this one socket, in order with its broadcasts."""
    connection.offer([Frame(text)])
