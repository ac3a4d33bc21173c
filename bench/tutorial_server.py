"""Baseline: the FastAPI tutorial's WebSocket chat (docs "WebSockets", multiple clients).

One global `ConnectionManager` holding a plain list, `broadcast` awaiting `send_text` on each
connection in turn; no authentication, no storage, no history. Two deliberate differences
from the docs, both in the tutorial's favour and the same for every scenario:

- a "joined" broadcast on connect (the docs only announce leaving), so that a join storm
  costs it what announcing every joiner costs;
- no "You wrote: ..." personal echo: the sender sees its own "says" broadcast (it is in the
  list), which serves as its acknowledgement, as chatroom's broadcast does.

`/ws/{client_id}` is the docs' endpoint (one global room). `/rooms/{room}/ws/{client_id}`
gives each room its own `ConnectionManager`, the minimal extension the multi-room scenarios
need. Run with the same uvicorn options as chatroom (app/server.py), except its WebSocket
protocol class: the tutorial runs uvicorn's own (`--ws auto`), not chatroom's subclass that
offers prepared frames (app/wire.py), which it would not use:

    python bench/tutorial_server.py --port 8001 [--ws websockets-sansio] [--http httptools]
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from app.core.config import Settings
from app.server import uvicorn_options


class ConnectionManager:
    def __init__(self) -> None:
        self.active_connections: list[WebSocket] = []

    async def connect(self, websocket: WebSocket) -> None:
        await websocket.accept()
        self.active_connections.append(websocket)

    def disconnect(self, websocket: WebSocket) -> None:
        self.active_connections.remove(websocket)

    async def broadcast(self, message: str) -> None:
        for connection in self.active_connections:
            await connection.send_text(message)


app = FastAPI()
manager = ConnectionManager()
room_managers: dict[str, ConnectionManager] = {}


async def _chat(websocket: WebSocket, client_id: int, room_manager: ConnectionManager) -> None:
    await room_manager.connect(websocket)
    try:
        await room_manager.broadcast(f"Client #{client_id} joined the chat")
        while True:
            data = await websocket.receive_text()
            await room_manager.broadcast(f"Client #{client_id} says: {data}")
    except WebSocketDisconnect:
        room_manager.disconnect(websocket)
        await room_manager.broadcast(f"Client #{client_id} left the chat")


@app.websocket("/ws/{client_id}")
async def websocket_endpoint(websocket: WebSocket, client_id: int) -> None:
    await _chat(websocket, client_id, manager)


@app.websocket("/rooms/{room}/ws/{client_id}")
async def room_endpoint(websocket: WebSocket, room: str, client_id: int) -> None:
    await _chat(websocket, client_id, room_managers.setdefault(room, ConnectionManager()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ws", default="auto")
    parser.add_argument("--http", default="auto")
    parser.add_argument("--loop", default="auto")
    args = parser.parse_args()
    options = uvicorn_options(Settings())
    del options["ws"]
    if args.http != "auto":  # else chatroom's own, bounds and all (app/guard.py)
        options["http"] = args.http
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        ws=args.ws,
        loop=args.loop,
        **options,
    )


if __name__ == "__main__":
    main()
