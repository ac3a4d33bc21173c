"""The rooms a user can open, most recently active first (the room list of the pages)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from app.api.deps import CurrentIdentity, ServicesDep
from app.api.schemas import NOT_AUTHENTICATED
from app.chat.protocol import iso_utc
from app.chat.reads import UNREAD_COUNT_CAP, unread_counts
from app.chat.store import recent_rooms

router = APIRouter()


class RoomOut(BaseModel):
    room: str
    last_message_id: int
    last_message_at: str
    last_user: str
    unread: int = Field(
        description="Messages by others after your read marker, counted up to "
        f"{UNREAD_COUNT_CAP} (so {UNREAD_COUNT_CAP} means that many or more)"
    )


class RoomsOut(BaseModel):
    rooms: list[RoomOut]


@router.get("/rooms", tags=["rooms"], responses=NOT_AUTHENTICATED)
async def list_rooms(
    identity: CurrentIdentity,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> RoomsOut:
    """Rooms holding messages, ordered by their newest message; only those your token opens.
    Each with its unread count: the messages by others after your read marker (the socket's
    `read` frame)."""
    found = await recent_rooms(services.sessions, limit=limit, only=identity.claims.rooms)
    rooms = [r for r in found if identity.may_enter(r.room)]
    unread = await unread_counts(
        services.sessions, user=identity.username, rooms=[r.room for r in rooms]
    )
    return RoomsOut(
        rooms=[
            RoomOut(
                room=r.room,
                last_message_id=r.last_message_id,
                last_message_at=iso_utc(r.last_message_at),
                last_user=r.last_user,
                unread=unread[r.room],
            )
            for r in rooms
        ]
    )
