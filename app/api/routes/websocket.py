"""The room socket: `/items/{item_id}/ws?since=<id>`; the protocol is in docs/protocol.md."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query, WebSocket, status
from fastapi.exceptions import WebSocketRequestValidationError

from app.api.deps import ServicesDep, SocketIdentity
from app.api.schemas import MAX_MESSAGE_ID, RoomId

logger = logging.getLogger("chatroom.auth")

router = APIRouter()

Since = Annotated[
    int | None,
    Query(ge=0, le=MAX_MESSAGE_ID, description="Replay the messages after this id"),
]


@router.websocket("/items/{item_id}/ws")
async def room_socket(
    websocket: WebSocket,
    item_id: RoomId,
    identity: SocketIdentity,
    services: ServicesDep,
    since: Since = None,
) -> None:
    """Join the room of an item: welcome, history, then live messages."""
    await websocket.accept()
    await services.chat.serve(
        websocket,
        user=identity.username,
        room=item_id,
        since=since,
        token=identity.claims,
        moderator=identity.moderates(item_id),
    )


async def refuse_invalid_handshake(
    websocket: WebSocket, exc: WebSocketRequestValidationError
) -> None:
    """An item id or `since` that does not parse: 1008 before accept (HTTP 403), logged."""
    fields = ", ".join(str(error["loc"][-1]) for error in exc.errors())
    logger.info("refused socket %s: invalid %s", websocket.url.path, fields)
    await websocket.close(status.WS_1008_POLICY_VIOLATION, f"invalid {fields}")
