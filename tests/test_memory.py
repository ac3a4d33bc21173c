"""What sockets that never read can make the server hold, and for how long.

Sockets that ask for a room's whole history (`?since=0`) and then read nothing: the server
holds at most a send buffer's worth for each (CHATROOM_SEND_BUFFER_BYTES; the history frame
takes at most half of it), and lets go of it once the heartbeat gives up on them. Memory is
the server's as tracemalloc sees it: the server runs in this process, in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import socket
import sqlite3
import tracemalloc
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy.engine import make_url

from app.core.config import Settings
from app.core.security import create_access_token
from tests.helpers import SECRET, ChatClient, LiveServer, connect, fill_room, register

SILENT = 8
ROOM = "flood"
# A thousand messages of 4000 NUL characters, six bytes of JSON each: 24 MB to replay.
FLOOD = ["\0" * 4000] * 1000


def silent_socket(server: LiveServer, token: str) -> socket.socket:
    """A raw socket that asks for the whole history, then never reads a byte.

    A small receive buffer keeps what the kernels take off the server's hands small."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /items/{ROOM}/ws?token={token}&since=0 HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    return sock


def account(database_url: str, name: str) -> str:
    """A user that can only use the token minted here (registering costs Argon2's time)."""
    with sqlite3.connect(make_url(database_url).database or "") as connection:
        connection.execute(
            "INSERT INTO users (username, password_hash, created_at) VALUES (?, '!', ?)",
            (name, datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")),
        )
    return create_access_token(name, key=SECRET, minutes=10)


def traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


class Flood:
    """A server whose room holds FLOOD, a watcher in that room, and tokens for SILENT users
    (one socket each, so the watcher sees each join and leave)."""

    def __init__(self, server: LiveServer, watcher: ChatClient, tokens: list[str]) -> None:
        self.server, self.watcher, self.tokens = server, watcher, tokens
        self.sockets: list[socket.socket] = []

    async def open_silent_sockets(self, count: int = SILENT) -> None:
        """Open count of them, and wait until each has been sent its history (its join is
        announced after that)."""
        self.sockets = [silent_socket(self.server, token) for token in self.tokens[:count]]
        await self.notices("join", count)

    async def notices(self, kind: str, count: int = SILENT) -> None:
        """Wait until the watcher was told of count silent users' join (or leave)."""
        users: set[str] = set()
        while len(users) < count:
            frame = await self.watcher.recv_type(kind, timeout=60)
            if frame["user"] != "watcher":
                users.add(frame["user"])


@pytest.fixture
async def flood(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[Flood]:
    server = LiveServer(settings.model_copy(update=getattr(request, "param", {}))).start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            watcher_token = await register(http, "watcher")
        tokens = [account(settings.database_url, f"silent{i}") for i in range(SILENT)]
        fill_room(settings.database_url, ROOM, "watcher", FLOOD)
        watcher = await connect(server, ROOM, watcher_token, max_size=None)
        await watcher.join()
        state = Flood(server, watcher, tokens)
        tracemalloc.start()
        try:
            yield state
        finally:
            tracemalloc.stop()
            for sock in state.sockets:
                sock.close()
    finally:
        server.stop()


async def test_sockets_that_never_read_hold_at_most_their_send_buffer(
    flood: Flood, settings: Settings
) -> None:
    before = traced()
    await flood.open_silent_sockets()
    assert traced() - before < SILENT * settings.send_buffer_bytes


@pytest.mark.parametrize(
    "flood", [{"ping_interval_seconds": 0.5, "ping_timeout_seconds": 0.5}], indirect=True
)
async def test_sockets_that_never_read_are_dropped_and_let_go_of(flood: Flood) -> None:
    before = traced()
    await flood.open_silent_sockets()
    # The heartbeat gives up on them (their pings wait behind the unread history), and the
    # server drops them: the room is told they left, and nothing of theirs is held.
    await flood.notices("leave")
    assert traced() - before < 1024 * 1024


def server_holds(server: LiveServer, sock: socket.socket) -> bool:
    """The server's end of sock's connection is still open (ESTABLISHED in /proc/net/tcp)."""
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    ends = {(int(r[1].split(":")[1], 16), int(r[2].split(":")[1], 16), r[3]) for r in rows}
    return (server.port, sock.getsockname()[1], "01") in ends


async def let_go_of(server: LiveServer, sock: socket.socket) -> bool:
    """Whether the server drops sock's connection within a minute (polled: nothing tells)."""
    for _ in range(600):
        if not server_holds(server, sock):
            return True
        await asyncio.sleep(0.1)
    return False


@pytest.mark.parametrize(
    "flood",
    [{"rate_limit": 0, "send_buffer_frames": 16, "ping_interval_seconds": 0}],
    indirect=True,
)
async def test_a_socket_closed_for_not_reading_is_let_go_of(flood: Flood) -> None:
    """Closed with 1013 while what it was sent still waits: its peer will never take the
    close frame either, and the server does not wait for it for ever."""
    await flood.open_silent_sockets(1)
    left = False
    while not left:  # talk until the server gives up on the silent socket
        await flood.watcher.send("x" * 3900)
        while True:
            frame = await flood.watcher.recv()
            left = left or (frame["type"] == "leave" and frame["user"] == "silent0")
            if frame["type"] == "message":
                break
    [sock] = flood.sockets
    assert await let_go_of(flood.server, sock)


async def test_the_replay_cache_keeps_at_most_its_byte_budget(settings: Settings) -> None:
    """Rooms joined one after another: their cached replays take at most
    CHATROOM_REPLAY_CACHE_BYTES, however large each room's history."""
    budget = 4 * 1024 * 1024
    rooms = [f"heavy{i}" for i in range(16)]
    for room in rooms:  # 50 messages of 24 KB: a 1.2 MB replay each, before the fix
        fill_room(settings.database_url, room, "watcher", FLOOD[:50])
    server = LiveServer(settings.model_copy(update={"replay_cache_bytes": budget})).start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            token = await register(http, "watcher")
        tracemalloc.start()
        try:
            before = traced()
            for room in rooms:
                client = await connect(server, room, token, max_size=None)
                await client.join()
                await client.close()
            held = traced() - before
        finally:
            tracemalloc.stop()
        assert held < budget + 1024 * 1024
    finally:
        server.stop()
