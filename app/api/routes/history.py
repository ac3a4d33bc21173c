"""REST history of a room, posting to it, and the health check."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status

from app.api.deps import CurrentIdentity, Identity, ServicesDep
from app.api.schemas import (
    MAX_MESSAGE_ID,
    NOT_AUTHENTICATED,
    ChangeOut,
    HistoryOut,
    MessageIn,
    MessageOut,
    PostedMessageOut,
    RoomId,
    error,
)
from app.chat.protocol import FrameError, change_payload, message_frame, message_payload
from app.chat.ratelimit import RateLimited
from app.chat.store import StoreFailed, history_page

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
    changes: Annotated[
        bool, Query(description="With `after`: the edits and deletes too, as on a resume")
    ] = False,
) -> HistoryOut:
    """Messages of a room, oldest first.

    Without `after`: the newest `limit` messages (before `before`, if given); `has_more` says
    older ones exist. With `after`: the oldest `limit` messages after it; `has_more` says newer
    ones exist; with `changes=true` also the edits and deletes made after it, in their place
    (what a socket's `?since=` replay holds), each with its `seq`.
    """
    _check_room(identity, item_id)
    if changes and after is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "changes needs after")
    rows, has_more = await history_page(
        services.sessions, room=item_id, limit=limit, before=before, after=after, changes=changes
    )
    return HistoryOut(
        room=item_id,
        messages=[
            MessageOut.model_validate(message_payload(row))
            if row.kind == "message"
            else ChangeOut.model_validate(change_payload(row))
            for row in rows
        ],
        has_more=has_more,
    )


@router.post(
    "/items/{item_id}/messages",
    tags=["history"],
    status_code=status.HTTP_201_CREATED,
    response_model=PostedMessageOut,
    responses={
        **NOT_AUTHENTICATED,
        200: {"model": PostedMessageOut, "description": "A resend: the message stored before"},
        403: error("The token's `rooms` do not include this room"),
        422: error("Empty or too long body, or a bad `client_msg_id`"),
        429: error("Over the user's send rate (`Retry-After`)"),
        503: error("The message could not be stored; send it again"),
    },
)
async def post_message(
    item_id: RoomId, message: MessageIn, identity: CurrentIdentity, services: ServicesDep
) -> Response:
    """Store a message and broadcast it to the room, as if sent over its socket.

    201 with the stored message; a `client_msg_id` its user already sent to this room stores
    nothing and answers 200 with the message stored the first time.
    """
    _check_room(identity, item_id)
    try:
        stored = await services.chat.post(
            room=item_id,
            user=identity.username,
            body=message.body,
            client_msg_id=message.client_msg_id,
            name=identity.claims.display_name,
        )
    except FrameError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, exc.detail) from None
    except RateLimited as exc:
        headers = {"Retry-After": str(math.ceil(exc.retry_after))}
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, exc.detail, headers) from None
    except StoreFailed:
        detail = "the message could not be stored; send it again"
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail) from None
    code = status.HTTP_200_OK if stored.duplicate else status.HTTP_201_CREATED
    # The very text of its `message` frame: one encoder for socket, history and REST.
    return Response(message_frame(stored.message), code, media_type="application/json")


def _check_room(identity: Identity, room: str) -> None:
    if not identity.may_enter(room):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "your token does not open this room")


# HEAD too: uptime monitors and load balancers often probe with it.
@router.get("/healthz", tags=["health"])
@router.head("/healthz", tags=["health"])
async def healthz() -> dict[str, str]:
    """200 while the server runs."""
    return {"status": "ok"}
