"""The room socket: authenticate the handshake, then hand the socket to the chat service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, WebSocket, WebSocketException

from app.deps import CLOSE_POLICY_VIOLATION, ServicesDep, WebSocketIdentity
from app.schemas import MAX_MESSAGE_ID, RoomId

router = APIRouter()


@router.websocket("/items/{item_id}/ws")
async def room_socket(
    websocket: WebSocket,
    item_id: RoomId,
    identity: WebSocketIdentity,
    services: ServicesDep,
    since: Annotated[int | None, Query(ge=0, le=MAX_MESSAGE_ID)] = None,
) -> None:
    if not identity.may_enter(item_id):
        raise WebSocketException(CLOSE_POLICY_VIOLATION, "your token does not open this room")
    await websocket.accept()
    await services.chat.serve(
        websocket,
        user=identity.username,
        room=item_id,
        since=since,
        expires_at=identity.claims.expires_at,
    )
