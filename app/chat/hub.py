"""Rooms of this process: which connections are in which room, and fan-out to them.

Fan-out never waits for a socket. A connection's frames are written at once when nothing is
queued before them and the socket takes them without waiting (the usual case); otherwise
they go into the connection's bounded outbox, drained by a sender task that lives only
while there is something to send. A connection over its limits (frames in its outbox, or
bytes in its outbox and its socket's buffer, the history replay included) is closed with
1013, and its failing affects no one else.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.status import WS_1013_TRY_AGAIN_LATER
from starlette.websockets import WebSocket, WebSocketDisconnect

from app.core.metrics import Metrics
from app.core.security import TokenClaims
from app.wire import prepare, send_texts, unsent_bytes, write_now

logger = logging.getLogger("chatroom.hub")


@dataclass(frozen=True, slots=True)
class Frame:
    """An encoded outgoing frame; message_id is set for chat messages, for de-duplication.

    Most frames go to the whole room. A typing notice goes to everyone but its user
    (not_to), a read marker only to its user's sockets (only_to).
    """

    text: str
    message_id: int | None = None
    not_to: str | None = None
    only_to: str | None = None

    def reaches(self, user: str) -> bool:
        return user != self.not_to and self.only_to in (None, user)


class Connection:
    """One socket in one room, with its bounded outbox."""

    __slots__ = (
        "user",
        "room",
        "_outbox",
        "_outbox_bytes",
        "_max_frames",
        "_max_bytes",
        "_last_message_id",
        "_skip_through",
        "_websocket",
        "_sender",
        "_until",
        "token",
        "close_code",
        "close_reason",
    )

    def __init__(
        self, *, user: str, room: str, max_frames: int, max_bytes: int, token: TokenClaims
    ) -> None:
        self.user = user
        self.room = room
        self.token = token  # what opened the socket: it closes when that expires or is revoked
        self._outbox: list[Frame] = []  # frames waiting for the sender, oldest first
        self._outbox_bytes = 0
        self._max_frames = max_frames  # 0: no limit, as for max_bytes
        self._max_bytes = max_bytes
        # Highest message id given to this socket: a repeat of one is dropped.
        self._last_message_id = 0
        self._skip_through = 0  # chat messages up to this id were in the replay
        self._websocket: WebSocket | None = None  # set by start(): sending may begin
        self._sender: asyncio.Task[None] | None = None  # only while the outbox drains
        self._until: asyncio.Timeout | None = None  # the socket's receiving, while it runs
        self.close_code: int | None = None  # set by abort(): the close frame to send
        self.close_reason = ""

    @property
    def last_message_id(self) -> int:
        return self._last_message_id

    def offer(self, frames: Sequence[Frame], prepared: Sequence[bytes] | None = None) -> bool:
        """Send or queue frames, in order; False when that puts the outbox over its limits.

        prepared: wire.prepare() of frames' texts, when the caller made it once for many
        connections. A chat message at or below the last one given is a repeat (a replay
        after a broker outage overlaps what was delivered) and is dropped.
        """
        if self.close_code is not None:
            return True
        fresh = []
        for frame in frames:
            if frame.message_id is not None:
                if frame.message_id <= self._last_message_id:
                    continue
                self._last_message_id = frame.message_id
            fresh.append(frame)
        if not fresh:
            return True
        websocket = self._websocket
        if websocket is not None and self._sender is None:
            if prepared is None or len(fresh) != len(frames):
                prepared = prepare([frame.text for frame in fresh])
            if write_now(websocket, prepared):
                return True  # nothing waits before them, and the socket took them at once
        self._outbox += fresh
        self._outbox_bytes += sum(len(frame.text) for frame in fresh)
        if (self._max_frames and len(self._outbox) > self._max_frames) or (
            self._max_bytes and self._behind(websocket) > self._max_bytes
        ):
            return False
        if websocket is not None and self._sender is None:
            self._sender = asyncio.create_task(self._drain(websocket))
        return True

    def _behind(self, websocket: WebSocket | None) -> int:
        """Bytes given to this socket that its peer has not taken: the outbox, and what the
        socket's buffer still holds of earlier writes (its history replay, say)."""
        return self._outbox_bytes + (0 if websocket is None else unsent_bytes(websocket))

    def start(self, websocket: WebSocket, *, skip_through: int, until: asyncio.Timeout) -> bool:
        """Start sending, after the history replay; False if aborted meanwhile.

        Chat messages with id <= skip_through were in the replay and are not sent again.
        until: the timeout around the socket's receiving, which abort() brings forward.
        """
        if self.close_code is not None:
            return False
        self._skip_through = skip_through
        self._last_message_id = max(self._last_message_id, skip_through)
        self._websocket = websocket
        self._until = until
        if self._outbox:
            self._sender = asyncio.create_task(self._drain(websocket))
        return True

    def abort(self, code: int, reason: str) -> None:
        """Stop sending and have the socket closed with code (by its serve())."""
        if self.close_code is not None:
            return
        self.close_code, self.close_reason = code, reason
        until = self._until
        self.stop()
        if until is not None:
            until.reschedule(asyncio.get_running_loop().time())

    def stop(self) -> None:
        """Send nothing more (the socket is ending)."""
        self._websocket, self._outbox, self._outbox_bytes, self._until = None, [], 0, None
        if self._sender is not None:
            self._sender.cancel()  # it may be stuck in a send to a peer that does not read

    async def _drain(self, websocket: WebSocket) -> None:
        """Send what is queued, and whatever queues meanwhile, in one write each time."""
        try:
            while self._outbox:
                frames, self._outbox = self._outbox, []
                self._outbox_bytes -= sum(len(frame.text) for frame in frames)
                skip = self._skip_through
                await send_texts(
                    websocket,
                    [f.text for f in frames if f.message_id is None or f.message_id > skip],
                )
        except Exception as exc:
            # A send to a socket the peer already closed is how most connections end; the
            # receiving side sees the disconnect too.
            if not isinstance(exc, OSError | RuntimeError | WebSocketDisconnect):
                logger.error("sending to %s failed", self.user, exc_info=exc)
            # Nothing more is sent (not stop(): this task would cancel itself).
            self._websocket, self._outbox, self._outbox_bytes = None, [], 0
        finally:
            self._sender = None


class Hub:
    """Local rooms and who is in them; knows nothing of brokers or the database."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._rooms: dict[str, dict[Connection, None]] = {}
        # The one count of sockets per user of each room in this process.
        self._users: dict[str, Counter[str]] = {}
        self._deliveries = (metrics or Metrics()).deliveries

    def add(self, connection: Connection) -> bool:
        """Register connection; True when it is its user's first in the room."""
        self._rooms.setdefault(connection.room, {})[connection] = None
        users = self._users.setdefault(connection.room, Counter())
        users[connection.user] += 1
        return users[connection.user] == 1

    def remove(self, connection: Connection) -> bool:
        """Unregister connection; True when it was its user's last in the room."""
        members = self._rooms.get(connection.room, {})
        if connection not in members:
            return False
        del members[connection]
        if not members:
            del self._rooms[connection.room]
        users = self._users[connection.room]
        users[connection.user] -= 1
        if users[connection.user]:
            return False
        del users[connection.user]
        if not users:
            del self._users[connection.room]
        return True

    @property
    def rooms(self) -> list[str]:
        return list(self._rooms)

    def room_count(self) -> int:
        return len(self._rooms)

    def socket_count(self) -> int:
        return sum(len(members) for members in self._rooms.values())

    def connections(self, room: str | None = None) -> list[Connection]:
        """The connections of room, or of every room."""
        if room is not None:
            return list(self._rooms.get(room, ()))
        return [c for members in self._rooms.values() for c in members]

    def members(self) -> list[tuple[str, str]]:
        """(room, user) for every user with a socket here."""
        return [(room, user) for room, users in self._users.items() for user in users]

    def users(self, room: str) -> list[str]:
        return sorted(self._users.get(room, ()))

    def resume_point(self, room: str) -> int | None:
        """The highest id every socket of room has been given (None: the room is empty)."""
        points = [c.last_message_id for c in self._rooms.get(room, ())]
        return min(points) if points else None

    def deliver(self, room: str, frames: Sequence[Frame]) -> None:
        """Give frames to every connection of room (one write each, where the socket takes
        it at once); overflowing ones are closed with 1013."""
        members = self._rooms.get(room)
        if not members:
            return
        prepared = prepare([frame.text for frame in frames])  # framed once for the room
        addressed = any(frame.not_to or frame.only_to for frame in frames)
        delivered = 0 if addressed else len(frames) * len(members)
        for connection in members:
            mine = frames
            if addressed:
                mine = [frame for frame in frames if frame.reaches(connection.user)]
                if not mine:
                    continue
                delivered += len(mine)
            if not connection.offer(mine, prepared if len(mine) == len(frames) else None):
                logger.info("closing slow connection of %s in %s", connection.user, room)
                connection.abort(WS_1013_TRY_AGAIN_LATER, "send buffer full")
        self._deliveries.inc(delivered)  # once a batch: fan-out is hot
