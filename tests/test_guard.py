"""Connections that do not make their request in time or in size are answered and closed, and
idle connections cannot keep other clients out (app/guard.py), over raw sockets."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.core.config import Settings
from tests.helpers import SECRET, LiveServer, free_port, wait_for_health

# Not a speed limit: how long a test waits before it concludes the server never answers.
PATIENCE = 30.0
HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
FORM = (
    b"POST /auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
)
UPGRADE = (
    b"GET /items/r1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
)


@pytest.fixture
def quick_server(settings: Settings) -> Iterator[LiveServer]:
    live = LiveServer(settings.model_copy(update={"request_timeout_seconds": 0.5})).start()
    yield live
    live.stop()


async def exchange(server: LiveServer, data: bytes) -> bytes:
    """Send data, then read until the server closes; fails if it never does."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), PATIENCE)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("sent", "answer"),
    [
        (b"", b"HTTP/1.1 408 "),
        (HEAD, b"HTTP/1.1 408 "),
        (FORM + b"Content-Length: 100\r\n\r\nusername=", b""),
    ],
    ids=["nothing", "half a head", "half a body"],
)
async def test_an_unfinished_request_is_closed_after_the_deadline(
    quick_server: LiveServer, sent: bytes, answer: bytes
) -> None:
    received = await exchange(quick_server, sent)
    assert received.startswith(answer) if answer else received == b""
    # A request that arrives in time is served as before, on a kept-alive connection too.
    async with httpx.AsyncClient(base_url=quick_server.url) as http:
        for _ in range(2):
            assert (await http.get("/healthz")).status_code == 200
            await asyncio.sleep(0.6)


def numbered_headers(count: int) -> bytes:
    return b"".join(b"X-%d: a\r\n" % i for i in range(count))


@pytest.mark.parametrize(
    "head",
    [
        HEAD + b"X-Big: " + b"a" * 20_000 + b"\r\n",
        HEAD + numbered_headers(5000),
        # Within 16 KiB, but over the websockets parser's limits for a handshake.
        UPGRADE + b"Cookie: " + b"c" * 9000 + b"\r\n",
        UPGRADE + numbered_headers(130),
    ],
    ids=["one 20 KB header", "5000 headers", "handshake: a 9000-byte line", "handshake: 130"],
)
async def test_an_oversized_request_head_is_answered_431_and_closed(
    server: LiveServer, head: bytes
) -> None:
    assert (await exchange(server, head + b"\r\n")).startswith(b"HTTP/1.1 431 ")
    # A large cookie jar within CHATROOM_MAX_HEADER_BYTES (16 KiB) is still served.
    cookie = {"Cookie": "jar=" + "c" * 12_000}
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/healthz", headers=cookie)).status_code == 200


def test_clients_get_in_while_idle_connections_fill_the_open_file_limit(tmp_path: Path) -> None:
    """`chatroom serve` with 256 open files, 300 connections that never finish a request."""
    port = free_port()
    env = {
        **os.environ,
        "CHATROOM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'fds.db'}",
        "CHATROOM_SECRET_KEY": SECRET,
        "CHATROOM_REQUEST_TIMEOUT_SECONDS": "600",  # so only the connection limit frees room
    }
    serve = f"ulimit -Sn 256 && exec {sys.executable} -m app.cli serve --port {port}"
    server = subprocess.Popen(
        ["/bin/sh", "-c", serve], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"

    async def scenario() -> list[int]:
        idle = []
        try:
            for _ in range(300):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(HEAD)
                idle.append(writer)
            await asyncio.sleep(0.5)
            async with httpx.AsyncClient(base_url=base, timeout=PATIENCE) as http:
                return [(await http.get("/healthz")).status_code for _ in range(3)]
        finally:
            for writer in idle:
                writer.close()

    try:
        wait_for_health(base)
        assert asyncio.run(scenario()) == [200, 200, 200]
    finally:
        server.kill()
        server.wait()
