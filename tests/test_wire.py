"""Prepared frames on a real socket: chatroom's uvicorn protocol offers them, and a client
reads them as ordinary text frames, in order with what went through ASGI."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from app.core.config import Settings
from app.wire import prepared_frame, prepared_writer
from tests.helpers import LiveServer

# Lengths that take each of a frame's three length encodings (7 bits, 16 bits, 64 bits).
TEXTS = ["short: ünïcode ✓", "m" * 300, "l" * 70_000]


class WritingApp:
    """Writes TEXTS as prepared frames, one through ASGI, then tries again after the close."""

    def __init__(self) -> None:
        self.offered = False
        self.written: list[bool] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        write = prepared_writer(scope)
        self.offered = write is not None
        if write is None:
            return
        self.written = [write([prepared_frame(text)]) for text in TEXTS]
        await send({"type": "websocket.send", "text": "through ASGI"})
        self.written.append(write([prepared_frame("after the ASGI send")]))
        await receive()  # the client's close
        self.written.append(write([prepared_frame("after the close")]))


@pytest.fixture
def writing_app(tmp_path: Any) -> Iterator[tuple[WritingApp, LiveServer]]:
    app = WritingApp()
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/unused.db")
    server = LiveServer(settings, app=app).start()
    yield app, server
    server.stop()


async def test_prepared_frames_arrive_as_text_in_order_and_stop_at_the_close(
    writing_app: tuple[WritingApp, LiveServer],
) -> None:
    app, server = writing_app
    async with websockets.connect(f"{server.ws_url}/", max_size=None) as client:
        received = [await client.recv() for _ in range(len(TEXTS) + 2)]
    assert app.offered, "chatroom's uvicorn options no longer offer prepared frames"
    assert received == [*TEXTS, "through ASGI", "after the ASGI send"]
    # Once the close handshake has begun, the socket refuses: ASGI's send reports it.
    assert app.written == [True] * (len(TEXTS) + 1) + [False]
