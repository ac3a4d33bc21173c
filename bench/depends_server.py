"""Baselines for what a socket costs before any chat: the FastAPI docs' page that uses
`Depends`, and a bare FastAPI WebSocket that only accepts.

- `/items/{item_id}/ws`: the docs' "Using Depends and others" example (`get_cookie_or_token`),
  as written there: a cookie or `token` query parameter read by a dependency, refused with
  1008 when both are missing, then an echo loop. The idle-memory target compares chatroom's
  idle socket with this one's.
- `/bare/ws`: accept, then wait for the client to leave. The join storm reports chatroom's
  time to let 2000 clients in (with their history) as a multiple of this one's.

Run with the same uvicorn WebSocket options as chatroom, and uvicorn's own protocol class:

    python bench/depends_server.py --port 8003
"""

from __future__ import annotations

import argparse
from typing import Annotated

import uvicorn
from fastapi import (
    Cookie,
    Depends,
    FastAPI,
    Query,
    WebSocket,
    WebSocketDisconnect,
    WebSocketException,
    status,
)

from app.core.config import Settings
from app.server import uvicorn_options

app = FastAPI()


async def get_cookie_or_token(
    websocket: WebSocket,
    session: Annotated[str | None, Cookie()] = None,
    token: Annotated[str | None, Query()] = None,
) -> str:
    if session is None and token is None:
        raise WebSocketException(code=status.WS_1008_POLICY_VIOLATION)
    return session or token or ""


@app.websocket("/items/{item_id}/ws")
async def websocket_endpoint(
    *,
    websocket: WebSocket,
    item_id: str,
    q: int | None = None,
    cookie_or_token: Annotated[str, Depends(get_cookie_or_token)],
) -> None:
    await websocket.accept()
    try:
        while True:
            data = await websocket.receive_text()
            await websocket.send_text(f"Session cookie or query token value is: {cookie_or_token}")
            if q is not None:
                await websocket.send_text(f"Query parameter q is: {q}")
            await websocket.send_text(f"Message text was: {data}, for item ID: {item_id}")
    except WebSocketDisconnect:
        pass


@app.websocket("/bare/ws")
async def bare(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    options = uvicorn_options(Settings())
    del options["ws"]
    uvicorn.run(app, host="127.0.0.1", port=args.port, **options)


if __name__ == "__main__":
    main()
