"""Rooms of this process: which connections are in which room, and fan-out to them.

A frame is written to a socket right away, in the fan-out loop, while the socket takes
writes without waiting: the common case costs no task, no wake-up and no queue. Only a socket
whose send would wait (its peer reads slowly) gets a bounded outbox and a task that drains it,
so a slow or dead receiver never delays anyone else; one whose outbox overflows is closed with
1013 instead of growing without bound. An idle socket holds no task of its own.

A chat message is framed once for the whole room (app/wire.py) and, where the server offers
it, written as those bytes to each socket; elsewhere it goes through the ASGI `send`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Coroutine, Generator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from starlette.types import Send
from starlette.websockets import WebSocketDisconnect

from app.wire import WritePrepared, prepared_frame

logger = logging.getLogger("chatroom.hub")

CLOSE_TRY_AGAIN_LATER = 1013


@dataclass(frozen=True, slots=True)
class Frame:
    """An encoded outgoing frame; message_id is set for chat messages, for de-duplication."""

    text: str
    message_id: int | None = None


Event = dict[str, Any]


def send_event(frame: Frame) -> Event:
    """The ASGI event that sends frame; one per message, shared by all its receivers."""
    return {"type": "websocket.send", "text": frame.text}


class Connection:
    """One socket in one room: sends frames inline, queueing only behind a send that waits."""

    __slots__ = (
        "user",
        "room",
        "_send",
        "_write_prepared",
        "_max_frames",
        "_max_bytes",
        "_outbox",
        "_outbox_bytes",
        "_skip_through",
        "last_message_id",
        "started",
        "close_code",
        "close_reason",
        "aborted",
        "_sender",
        "owner",
        "_interrupted",
        "expires_at",
    )

    def __init__(
        self,
        *,
        user: str,
        room: str,
        send: Send,
        max_frames: int,
        max_bytes: int,
        expires_at: float | None = None,
        write_prepared: WritePrepared | None = None,
    ) -> None:
        self.user = user
        self.expires_at = expires_at  # when the token that opened the socket expires
        self.room = room
        self._send = send  # the socket's ASGI send
        self._write_prepared = write_prepared  # when the server offers it (app/wire.py)
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        # Created on the first frame that has to wait; most sockets never need one.
        self._outbox: deque[Frame] | None = None
        self._outbox_bytes = 0
        self._skip_through = 0
        # Highest message id queued or replayed to this socket; raised by start() at first.
        self.last_message_id = 0
        self.started = False
        self.aborted = False
        # Set when the hub gives up on this connection: the close code to send.
        self.close_code: int | None = None
        self.close_reason = ""
        self._sender: asyncio.Task[None] | None = None  # only while a send is waiting
        # The task receiving from this socket, while it waits for frames: an abort
        # interrupts it, so that the socket ends without a task of its own watching for that.
        self.owner: asyncio.Task[None] | None = None
        self._interrupted = False

    def start(self, *, skip_through: int = 0) -> None:
        """Begin sending, after the history replay.

        Chat messages with id <= skip_through were already sent in the replay; the ones
        queued meanwhile are dropped here so the client sees each message exactly once.
        """
        self._skip_through = skip_through
        self.last_message_id = max(self.last_message_id, skip_through)
        self.started = True
        self._flush()

    def offer(
        self, frame: Frame, event: Event | None = None, prepared: bytes | None = None
    ) -> bool:
        """Send or queue frame; False when the outbox is over its limits (0 means no limit).

        event, prepared: frame's send_event and prepared_frame, when the caller made them
        once for many connections. A chat message at or below the last one queued is a
        repeat (a replay after a broker outage overlaps what was delivered) and is dropped.
        """
        if self.aborted:
            return True
        if frame.message_id is not None:
            if frame.message_id <= self.last_message_id:
                return True
            self.last_message_id = frame.message_id
        if self.started and self._sender is None and not self._outbox:
            # A refused prepared write is one that would wait or fail: ASGI handles both.
            write = self._write_prepared
            if prepared is None or write is None or not write(prepared):
                self._send_inline(event or send_event(frame))
            return True
        if self._outbox is None:
            self._outbox = deque()
        self._outbox.append(frame)
        self._outbox_bytes += len(frame.text)
        if (self._max_frames and len(self._outbox) > self._max_frames) or (
            self._max_bytes and self._outbox_bytes > self._max_bytes
        ):
            return False
        return True

    def offer_all(
        self,
        frames: Sequence[Frame],
        events: Sequence[Event],
        prepared: Sequence[bytes],
        joined: bytes,
    ) -> bool:
        """offer() each of a room's frames; as one write when the socket takes that.

        frames: chat messages in id order; events and prepared: theirs, one each; joined:
        the prepared frames back to back.
        """
        if (
            self.started
            and self._sender is None
            and not self._outbox
            and not self.aborted
            and self._write_prepared is not None
            and frames[0].message_id is not None
            and frames[0].message_id > self.last_message_id
            and self._write_prepared(joined)
        ):
            self.last_message_id = frames[-1].message_id or self.last_message_id
            return True
        fits = True
        for frame, event, data in zip(frames, events, prepared, strict=True):
            fits = self.offer(frame, event, data) and fits
        return fits

    def abort(self, code: int | None, reason: str = "") -> None:
        """Stop sending, drop what is queued and end the socket: closed with code, or
        without a close frame when code is None (the peer is gone)."""
        if not self.aborted:
            self.aborted = True
            self.close_code = code
            self.close_reason = reason
            if self.owner is not None:
                # Soon, not now: the owner may be the caller, and must be suspended (in
                # its receive) when the cancellation lands.
                asyncio.get_running_loop().call_soon(self._interrupt)
        self._outbox = None
        self._outbox_bytes = 0
        if self._sender is not None:
            self._sender.cancel()  # stuck in a send to a peer that does not read
            self._sender = None

    def _interrupt(self) -> None:
        if self.owner is not None and not self._interrupted:
            self._interrupted = True
            self.owner.cancel()

    def interrupted_by_abort(self) -> bool:
        """For the owner that caught CancelledError: was it this connection's abort alone?

        Consumes the abort's cancellation request, so the owner may carry on closing.
        """
        return self._interrupted and self.owner is not None and self.owner.uncancel() == 0

    def _flush(self) -> None:
        """Send queued frames inline until one has to wait (or none is left)."""
        outbox = self._outbox
        while outbox and self._sender is None and not self.aborted:
            frame = outbox.popleft()
            self._outbox_bytes -= len(frame.text)
            if frame.message_id is None or frame.message_id > self._skip_through:
                self._send_inline(send_event(frame))

    def _send_inline(self, event: Event) -> None:
        """Run the send coroutine up to its first wait; only a send that waits gets a task.

        The ASGI send of uvicorn (and any server that writes to a transport with room in its
        buffer) finishes without suspending, so one step runs it to the end.
        """
        # Every ASGI server's send is an `async def`: calling it makes a coroutine.
        coroutine = cast(Coroutine[Any, Any, None], self._send(event))
        try:
            waiting = coroutine.send(None)
        except StopIteration:
            return
        except Exception as exc:
            self._failed(exc)
            return
        self._sender = asyncio.get_running_loop().create_task(self._finish(coroutine, waiting))

    async def _finish(self, coroutine: Coroutine[Any, Any, None], waiting: Any) -> None:
        """Complete a send that waited, then drain what queued behind it."""
        try:
            await _Resume(coroutine, waiting)
            self._sender = None
            self._flush()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._sender = None
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        # A send to a socket the peer already closed is how most connections end.
        if not isinstance(exc, OSError | RuntimeError | WebSocketDisconnect):
            logger.error("sending to %s failed", self.user, exc_info=exc)
        self.abort(None)


class _Resume:
    """Await a coroutine that has already been stepped once and is waiting on `waiting`."""

    __slots__ = ("_coroutine", "_waiting")

    def __init__(self, coroutine: Coroutine[Any, Any, None], waiting: Any) -> None:
        self._coroutine = coroutine
        self._waiting = waiting

    def __await__(self) -> Generator[Any, Any, None]:
        coroutine, waiting = self._coroutine, self._waiting
        while True:
            try:
                sent = yield waiting
            except BaseException as exc:  # cancellation: hand it to the coroutine
                try:
                    waiting = coroutine.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    waiting = coroutine.send(sent)
                except StopIteration:
                    return


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
        event, prepared = send_event(frame), prepared_frame(frame.text)
        self._drop_overflowed(room, [c for c in members if not c.offer(frame, event, prepared)])

    def deliver_many(self, frames: Sequence[tuple[str, Frame]]) -> None:
        """deliver() each (room, frame) in order.

        A room's chat messages among them go to each socket in one write, not one per
        message: a committed batch holds several messages of a busy room, and every write is
        a system call.
        """
        by_room: dict[str, list[Frame]] = {}
        for room, frame in frames:
            by_room.setdefault(room, []).append(frame)
        for room, of_room in by_room.items():
            if len(of_room) == 1 or not _ascending_messages(of_room):
                for frame in of_room:
                    self.deliver(room, frame)
                continue
            members = self._rooms.get(room)
            if not members:
                continue
            events = [send_event(frame) for frame in of_room]
            prepared = [prepared_frame(frame.text) for frame in of_room]
            joined = b"".join(prepared)
            self._drop_overflowed(
                room,
                [c for c in members if not c.offer_all(of_room, events, prepared, joined)],
            )

    def _drop_overflowed(self, room: str, overflowed: list[Connection]) -> None:
        for connection in overflowed:
            logger.info(
                "closing slow connection of %s in %s: send buffer full", connection.user, room
            )
            connection.abort(CLOSE_TRY_AGAIN_LATER, "send buffer full")


def _ascending_messages(frames: Sequence[Frame]) -> bool:
    """Chat messages only, in increasing id order (as a writer commits them)."""
    previous = 0
    for frame in frames:
        if frame.message_id is None or frame.message_id <= previous:
            return False
        previous = frame.message_id
    return True
