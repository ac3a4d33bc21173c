"""REST history of a room, and the health check."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from app.api.deps import CurrentIdentity, ServicesDep
from app.api.schemas import (
    MAX_MESSAGE_ID,
    NOT_AUTHENTICATED,
    HistoryOut,
    MessageOut,
    RoomId,
    error,
)
from app.chat.protocol import message_payload
from app.chat.store import history_page

router = APIRouter()


@router.get(
    "/items/{item_id}/messages",
    tags=["history"],
    responses={**NOT_AUTHENTICATED, 403: error("The token's `rooms` do not include this room")},
    # A message has edited_at or deleted_by only once edited or deleted, as on the socket.
    response_model_exclude_none=True,
)
async def room_history(
    item_id: RoomId,
    identity: CurrentIdentity,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_MESSAGE_ID, description="Only ids below this")
    ] = None,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_MESSAGE_ID, description="Only ids above this")
    ] = None,
) -> HistoryOut:
    """Messages of a room, oldest first.

    Without `after`: the newest `limit` messages (before `before`, if given); `has_more` says
    older ones exist. With `after`: the oldest `limit` messages after it; `has_more` says newer
    ones exist.
    """
    if not identity.may_enter(item_id):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "your token does not open this room")
    messages, has_more = await history_page(
        services.sessions, room=item_id, limit=limit, before=before, after=after
    )
    return HistoryOut(
        room=item_id,
        messages=[MessageOut.model_validate(message_payload(m)) for m in messages],
        has_more=has_more,
    )


# HEAD too: uptime monitors and load balancers often probe with it.
@router.get("/healthz", tags=["health"])
@router.head("/healthz", tags=["health"])
async def healthz() -> dict[str, str]:
    """200 while the server runs."""
    return {"status": "ok"}
