"""The latest messages of recently joined rooms, kept encoded, for the history replay.

A join without `since` replays the room's last CHATROOM_HISTORY_LIMIT messages, as many of
them as fit in a history frame of `frame_bytes` (the newest; `has_more` then says older
ones exist). Reading and encoding them for every join makes a crowd arriving at once (a
meeting starting) cost a query and an encoding each; here each room's replay is read once,
then kept current from the messages the broker delivers, and its history frame is encoded
once per change. Rooms are dropped least recently joined first, beyond MAX_ROOMS or beyond
`max_bytes` (CHATROOM_REPLAY_CACHE_BYTES) for all rooms' messages and frames together.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.chat.hub import Frame
from app.chat.protocol import (
    history_frame,
    history_space,
    is_change,
    message_bytes,
    message_frame,
)
from app.chat.store import history_page

MAX_ROOMS = 1024  # rooms kept; beyond it the least recently joined is dropped


@dataclass(slots=True)
class _Room:
    ready: asyncio.Future[None]
    space: int  # bytes its history frame has for messages
    messages: deque[tuple[int, str, int]] = field(default_factory=deque)  # id, text, bytes
    size: int = 0  # bytes of messages
    last_id: int = 0  # of the newest message, replayed or not (0: none)
    has_more: bool = False
    # Deliveries that arrive while the room is being read; merged in afterwards.
    arrived: list[tuple[int, str]] | None = field(default_factory=list)
    frame: str | None = None

    @property
    def cost(self) -> int:
        """Bytes it holds: its messages, and as many again once its frame is built."""
        return self.size if self.frame is None else 2 * self.size


class RecentHistory:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        limit: int,
        frame_bytes: int,
        max_bytes: int,
    ) -> None:
        self._sessions = sessions
        self._limit = limit
        self._frame_bytes = frame_bytes
        self._max_bytes = max_bytes
        self._rooms: OrderedDict[str, _Room] = OrderedDict()
        self._bytes = 0  # the cost of the rooms kept

    async def replay(self, room: str) -> tuple[str, int]:
        """The encoded history frame of room, and the id of its last message (0: none).

        The frame may leave out messages up to that id, which `has_more` then announces.
        """
        entry = self._rooms.get(room)
        if entry is None:
            entry = await self._load(room)
        else:
            self._rooms.move_to_end(room)
            if not entry.ready.done():  # another join is reading it: wait for that read
                await asyncio.shield(entry.ready)
            entry.ready.result()  # re-raises its failure
        frame = entry.frame
        if frame is None:
            cost = entry.cost
            texts = [text for _, text, _ in entry.messages]
            frame = entry.frame = history_frame(room, texts, entry.has_more)
            self._resized(room, entry, cost)
        return frame, entry.last_id

    def note(self, room: str, frame: Frame) -> None:
        """A message frame delivered for room: keep its replay current."""
        entry = self._rooms.get(room)
        if entry is None or frame.message_id is None:
            return
        if is_change(frame.text):
            # An edit or delete changes a message the replay may hold: read it again (rare).
            self.forget({room})
            return
        if entry.arrived is not None:
            entry.arrived.append((frame.message_id, frame.text))
        else:
            cost = entry.cost
            self._append(entry, frame.message_id, frame.text)
            self._resized(room, entry, cost)

    def forget(self, rooms: set[str] | None = None) -> None:
        """Drop what may be stale (deliveries were lost); None: every room."""
        for room in list(self._rooms) if rooms is None else rooms:
            # A room still loading is dropped too: its read may predate the loss. Its
            # loader still answers its own waiters, but nothing more is kept.
            entry = self._rooms.pop(room, None)
            if entry is not None:
                self._bytes -= entry.cost

    async def _load(self, room: str) -> _Room:
        entry = _Room(
            ready=asyncio.get_running_loop().create_future(),
            space=history_space(room, self._frame_bytes),
        )
        self._rooms[room] = entry
        self._resized(room, entry, 0)
        try:
            messages, entry.has_more = await history_page(
                self._sessions, room=room, limit=self._limit
            )
        except BaseException as exc:
            if self._rooms.get(room) is entry:
                del self._rooms[room]
            entry.ready.set_exception(exc)
            entry.ready.exception()  # retrieved: other joins re-raise it themselves
            raise
        arrived, entry.arrived = entry.arrived or [], None
        for message_id, text in [(m.id, message_frame(m)) for m in messages] + arrived:
            self._append(entry, message_id, text)
        self._resized(room, entry, 0)
        entry.ready.set_result(None)
        return entry

    def _append(self, entry: _Room, message_id: int, text: str) -> None:
        if message_id <= entry.last_id:
            return  # already read from the database, or a repeat
        entry.last_id = message_id
        size = message_bytes(text)
        entry.messages.append((message_id, text, size))
        entry.size += size
        # The newest messages that fit in the frame; has_more tells of the rest.
        while entry.messages and (len(entry.messages) > self._limit or entry.size > entry.space):
            entry.size -= entry.messages.popleft()[2]
            entry.has_more = True
        entry.frame = None

    def _resized(self, room: str, entry: _Room, cost: int) -> None:
        """entry's cost was cost before a change: count the change if the room is kept, and
        drop the least recently joined rooms (maybe this one) beyond the bounds."""
        if self._rooms.get(room) is not entry:
            return
        self._bytes += entry.cost - cost
        while self._rooms and (len(self._rooms) > MAX_ROOMS or self._bytes > self._max_bytes):
            _, dropped = self._rooms.popitem(last=False)
            self._bytes -= dropped.cost
