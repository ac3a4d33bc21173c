"""Rooms of this process: which connections are in which room, and fan-out to them.

Each connection owns a bounded outbox drained by its own sender task, so a slow or dead
receiver never delays anyone else: fan-out only appends to outboxes, and a connection whose
outbox overflows is closed with 1013 instead of growing without bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

logger = logging.getLogger("chatroom.hub")

CLOSE_TRY_AGAIN_LATER = 1013


@dataclass(frozen=True, slots=True)
class Frame:
    """An encoded outgoing frame; message_id is set for chat messages, for de-duplication."""

    text: str
    message_id: int | None = None


SendText = Callable[[str], Awaitable[None]]


class Connection:
    """One socket in one room, with its outbox."""

    def __init__(
        self, *, user: str, room: str, send: SendText, max_frames: int, max_bytes: int
    ) -> None:
        self.user = user
        self.room = room
        self._send = send
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._outbox: deque[Frame] = deque()
        self._outbox_bytes = 0
        self._wakeup = asyncio.Event()
        self._skip_through = 0
        # Highest message id queued or replayed to this socket; set by run_sender at first.
        self.last_message_id = 0
        self.started = False
        # Set when the hub gives up on this connection: the close code to send.
        self.close_code: int | None = None
        self.close_reason = ""
        self._sender: asyncio.Task[None] | None = None
        self._sending = False

    def offer(self, frame: Frame) -> bool:
        """Queue frame; False when the outbox is over its limits (0 means no limit).

        A chat message at or below the last one queued is a repeat (a replay after a broker
        outage overlaps what was delivered) and is dropped.
        """
        if self.close_code is not None:
            return True
        if frame.message_id is not None:
            if frame.message_id <= self.last_message_id:
                return True
            self.last_message_id = frame.message_id
        self._outbox.append(frame)
        self._outbox_bytes += len(frame.text)
        if (self._max_frames and len(self._outbox) > self._max_frames) or (
            self._max_bytes and self._outbox_bytes > self._max_bytes
        ):
            return False
        self._wakeup.set()
        return True

    def abort(self, code: int, reason: str) -> None:
        """Stop sending: drop what is queued and make the sender return."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
        self._outbox.clear()
        self._outbox_bytes = 0
        self._wakeup.set()
        if self._sending and self._sender is not None:
            self._sender.cancel()  # stuck in a send to a peer that does not read

    async def run_sender(self, *, skip_through: int = 0) -> None:
        """Drain the outbox into the socket until aborted.

        Chat messages with id <= skip_through were already sent in the history replay;
        they are dropped here so the client sees each message exactly once.
        """
        self._skip_through = skip_through
        self.last_message_id = max(self.last_message_id, skip_through)
        self.started = True
        self._sender = asyncio.current_task()
        while True:
            while not self._outbox:
                if self.close_code is not None:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.close_code is not None:
                return
            frame = self._outbox.popleft()
            self._outbox_bytes -= len(frame.text)
            if frame.message_id is not None and frame.message_id <= self._skip_through:
                continue
            self._sending = True
            try:
                await self._send(frame.text)
            finally:
                self._sending = False


class Hub:
    """Local rooms and presence; knows nothing of HTTP, brokers or the database."""

    def __init__(self) -> None:
        self._rooms: dict[str, dict[Connection, None]] = {}
        self._presence: dict[str, Counter[str]] = {}

    def add(self, connection: Connection) -> bool:
        """Register connection; True when it is its user's first in the room."""
        self._rooms.setdefault(connection.room, {})[connection] = None
        counts = self._presence.setdefault(connection.room, Counter())
        counts[connection.user] += 1
        return counts[connection.user] == 1

    def remove(self, connection: Connection) -> bool:
        """Unregister connection; True when it was its user's last in the room."""
        members = self._rooms.get(connection.room)
        if members is None or connection not in members:
            return False
        del members[connection]
        if not members:
            del self._rooms[connection.room]
        counts = self._presence[connection.room]
        counts[connection.user] -= 1
        if counts[connection.user] > 0:
            return False
        del counts[connection.user]
        if not counts:
            del self._presence[connection.room]
        return True

    def connections(self, room: str) -> list[Connection]:
        return list(self._rooms.get(room, ()))

    def connections_of(self, user: str) -> list[Connection]:
        return [c for members in self._rooms.values() for c in members if c.user == user]

    @property
    def rooms(self) -> list[str]:
        return list(self._rooms)

    def members(self) -> list[tuple[str, str]]:
        """(room, user) for every user with a socket here."""
        return [(room, user) for room, counts in self._presence.items() for user in counts]

    def resume_point(self, room: str) -> int | None:
        """The highest id every live socket of room has been given (None: none is live)."""
        points = [c.last_message_id for c in self._rooms.get(room, ()) if c.started]
        return min(points) if points else None

    def deliver(self, room: str, frame: Frame) -> None:
        """Queue frame for every connection of room; overflowing ones are aborted with 1013."""
        members = self._rooms.get(room)
        if not members:
            return
        overflowed = [connection for connection in members if not connection.offer(frame)]
        for connection in overflowed:
            logger.info(
                "closing slow connection of %s in %s: send buffer full", connection.user, room
            )
            connection.abort(CLOSE_TRY_AGAIN_LATER, "send buffer full")
