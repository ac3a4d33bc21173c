"""The room socket: authenticate the handshake, then hand the socket to the chat service.

A plain ASGI endpoint on a Starlette route, not a FastAPI one. A socket lives for hours, and
FastAPI's dependency solving kept its solved values and frames for all of that time: an idle
socket went from 34.9 to 28.1 KiB without it (bench/idle_memory.py). Here the checks are a
few lines. It also gets the ASGI `send` itself, which fan-out calls with one shared event
per message instead of going through Starlette's per-call wrappers for every receiver.
"""

from __future__ import annotations

import re

from starlette.exceptions import WebSocketException
from starlette.routing import WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from app.api.deps import CLOSE_POLICY_VIOLATION, Identity, Services, websocket_identity
from app.api.schemas import MAX_MESSAGE_ID, ROOM_PATTERN

_ROOM = re.compile(ROOM_PATTERN)
_SINCE = re.compile(r"[0-9]{1,19}")


class RoomSocket:
    """`/items/{item_id}/ws?since=<id>`: the protocol is in docs/protocol.md."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        services: Services = websocket.state.services
        try:
            room, since, identity = await _admit(websocket, services)
        except WebSocketException as refusal:  # before accept: the client sees HTTP 403
            await websocket.close(refusal.code, refusal.reason)
            return
        user, expires_at = identity.username, identity.claims.expires_at
        del identity  # kept by this frame for the socket's life otherwise
        await websocket.accept()
        await services.chat.serve(
            websocket, send, user=user, room=room, since=since, expires_at=expires_at
        )


async def _admit(websocket: WebSocket, services: Services) -> tuple[str, int | None, Identity]:
    """The room, the `since` id and the user of a handshake, or the reason to refuse it."""
    room: str = websocket.path_params["item_id"]
    if not _ROOM.fullmatch(room):
        raise WebSocketException(CLOSE_POLICY_VIOLATION, "invalid item id")
    since = websocket.query_params.get("since")
    if since is not None and (not _SINCE.fullmatch(since) or int(since) > MAX_MESSAGE_ID):
        raise WebSocketException(CLOSE_POLICY_VIOLATION, "since must be a message id")
    identity = await websocket_identity(websocket, services)
    if not identity.may_enter(room):
        raise WebSocketException(CLOSE_POLICY_VIOLATION, "your token does not open this room")
    return room, None if since is None else int(since), identity


route = WebSocketRoute("/items/{item_id}/ws", RoomSocket(), name="room_socket")
