"""The latest messages of recently joined rooms, kept encoded, for the history replay.

A join without `since` replays the room's last CHATROOM_HISTORY_LIMIT messages. Reading and
encoding them for every join makes a crowd arriving at once (a meeting starting) cost a
query and an encoding each; here each room's replay is read once, then kept current from the
messages the broker delivers, and its history frame is encoded once per change.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.chat.hub import Frame
from app.chat.protocol import history_frame, message_frame
from app.chat.store import history_page

MAX_ROOMS = 1024  # rooms kept; beyond it the least recently joined is dropped


@dataclass(slots=True)
class _Room:
    ready: asyncio.Future[None]
    messages: deque[tuple[int, str]] = field(default_factory=deque)
    has_more: bool = False
    # Deliveries that arrive while the room is being read; merged in afterwards.
    arrived: list[tuple[int, str]] | None = field(default_factory=list)
    frame: str | None = None


class RecentHistory:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, limit: int) -> None:
        self._sessions = sessions
        self._limit = limit
        self._rooms: OrderedDict[str, _Room] = OrderedDict()

    async def replay(self, room: str) -> tuple[str, int]:
        """The encoded history frame of room, and the id of its last message (0: none)."""
        entry = self._rooms.get(room)
        if entry is None:
            entry = await self._load(room)
        else:
            self._rooms.move_to_end(room)
            if not entry.ready.done():  # another join is reading it: wait for that read
                await asyncio.shield(entry.ready)
            entry.ready.result()  # re-raises its failure
        if entry.frame is None:
            texts = [text for _, text in entry.messages]
            entry.frame = history_frame(room, texts, entry.has_more)
        last_id = entry.messages[-1][0] if entry.messages else 0
        return entry.frame, last_id

    def note(self, room: str, frame: Frame) -> None:
        """A message frame delivered for room: keep its replay current."""
        entry = self._rooms.get(room)
        if entry is None or frame.message_id is None:
            return
        if entry.arrived is not None:
            entry.arrived.append((frame.message_id, frame.text))
        else:
            self._append(entry, frame.message_id, frame.text)

    def forget(self, rooms: set[str] | None = None) -> None:
        """Drop what may be stale (deliveries were lost); None: every room."""
        for room in list(self._rooms) if rooms is None else rooms:
            # A room still loading is dropped too: its read may predate the loss. Its
            # loader still answers its own waiters, but nothing more is kept.
            self._rooms.pop(room, None)

    async def _load(self, room: str) -> _Room:
        entry = _Room(ready=asyncio.get_running_loop().create_future())
        self._rooms[room] = entry
        while len(self._rooms) > MAX_ROOMS:
            self._rooms.popitem(last=False)
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
        entry.messages = deque(((m.id, message_frame(m)) for m in messages), maxlen=self._limit)
        arrived, entry.arrived = entry.arrived or [], None
        for message_id, text in arrived:
            self._append(entry, message_id, text)
        entry.ready.set_result(None)
        return entry

    def _append(self, entry: _Room, message_id: int, text: str) -> None:
        if entry.messages and message_id <= entry.messages[-1][0]:
            return  # already read from the database, or a repeat
        if len(entry.messages) == entry.messages.maxlen:
            entry.has_more = True
        entry.messages.append((message_id, text))
        entry.frame = None
