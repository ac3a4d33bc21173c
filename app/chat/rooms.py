"""Which rooms are active: every room that holds a message, the most recently active first."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.models import Message


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
    latest = select(Message.room, func.max(Message.id).label("last_id")).group_by(Message.room)
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
    return [
        RoomActivity(room=room, last_message_id=id_, last_message_at=at, last_user=author)
        for room, id_, at, author in rows
    ]
