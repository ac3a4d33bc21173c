"""Read markers: how far each user has read each room, and the unread counts they give."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ScalarSelect, func, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.models import Message, ReadMarker

# An unread count stops here: counting a long history nobody read would cost a scan of it,
# and "99+" says all a room list needs.
UNREAD_COUNT_CAP = 100


class UnknownMessage(Exception):
    """The id names no message of the room."""


async def mark_read(
    sessions: async_sessionmaker[AsyncSession], *, user: str, room: str, message_id: int
) -> bool:
    """Record that user has read room up to message_id; True when that moved the marker.

    One upsert, which only inserts if message_id is a message of room, and only updates
    forward: a marker never goes back, however the requests of several sockets interleave.
    """
    async with sessions() as session, session.begin():
        dialect = session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        of_room = select(literal(user), literal(room), Message.id).where(
            Message.id == message_id, Message.room == room
        )
        upsert = insert(ReadMarker).from_select(["username", "room", "last_read_id"], of_room)
        moved = await session.scalar(
            upsert.on_conflict_do_update(
                index_elements=[ReadMarker.username, ReadMarker.room],
                set_={"last_read_id": upsert.excluded.last_read_id},
                where=upsert.excluded.last_read_id > ReadMarker.last_read_id,
            ).returning(ReadMarker.last_read_id)
        )
        if moved is not None:
            return True
        # Nothing written: the marker was already there or beyond, or the id is not the room's.
        known = await session.scalar(
            select(Message.id).where(Message.id == message_id, Message.room == room)
        )
    if known is None:
        raise UnknownMessage(message_id)
    return False


def _unread(user: str, room: str) -> ScalarSelect[int]:
    """Messages of room by others after user's marker, up to UNREAD_COUNT_CAP: a range of
    the (room, id) index of messages, read no further than the cap."""
    marker = (
        select(ReadMarker.last_read_id)
        .where(ReadMarker.username == user, ReadMarker.room == room)
        .scalar_subquery()
    )
    after = (
        select(literal(1))
        .where(
            Message.room == room,
            Message.id > func.coalesce(marker, 0),
            Message.author != user,
        )
        .limit(UNREAD_COUNT_CAP)
        .subquery()
    )
    return select(func.count()).select_from(after).scalar_subquery()


async def unread_counts(
    sessions: async_sessionmaker[AsyncSession], *, user: str, rooms: Sequence[str]
) -> dict[str, int]:
    """Each room's unread count for user, in one query."""
    if not rooms:
        return {}
    async with sessions() as session:
        row = (await session.execute(select(*(_unread(user, room) for room in rooms)))).one()
    return dict(zip(rooms, row, strict=True))
