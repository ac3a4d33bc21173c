"""Faults: slow and vanished clients, store failures, resends, and a graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from sqlalchemy.engine import make_url
from websockets.exceptions import ConnectionClosed

from app.core.config import Settings
from tests.helpers import (
    SECRET,
    ChatClient,
    LiveServer,
    free_port,
    join,
    register,
    wait_for_health,
)


async def history(http: httpx.AsyncClient, token: str, room: str = "r1") -> list[dict[str, Any]]:
    """The room's whole history, paged backwards through the REST API."""
    messages: list[dict[str, Any]] = []
    query = "limit=200"
    while True:
        page = (
            await http.get(
                f"/items/{room}/messages?{query}", headers={"Authorization": f"Bearer {token}"}
            )
        ).json()
        messages[:0] = page["messages"]
        if not page["has_more"]:
            return messages
        query = f"limit=200&before={page['messages'][0]['id']}"


@pytest.fixture
def roomy_server(settings: Settings) -> Iterator[LiveServer]:
    """Limits off except the send buffer, which is small so a stalled reader overflows fast."""
    live = LiveServer(
        settings.model_copy(
            update={
                "rate_limit": 0,
                "max_connections_per_user": 0,
                "send_buffer_frames": 64,
                "send_buffer_bytes": 0,
            }
        )
    ).start()
    yield live
    live.stop()


async def stalled_reader(server: LiveServer, room: str, token: str) -> ChatClient:
    """A client that reads its welcome and history, then never reads again.

    A tiny receive buffer makes the kernel stop accepting data early, as a phone on a dead
    network would; the websockets client also stops reading after one queued frame.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    ws = await websockets.connect(
        f"{server.ws_url}/items/{room}/ws?token={token}", sock=sock, max_queue=1
    )
    client = ChatClient(ws)
    await client.join()
    return client


async def test_reader_that_never_reads_is_closed_1013_and_others_get_everything(
    roomy_server: LiveServer,
) -> None:
    async with httpx.AsyncClient(base_url=roomy_server.url) as http:
        tokens = [await register(http, f"user{i}") for i in range(4)]
        slow_token = await register(http, "sloth")
    senders = [await join(roomy_server, "busy", tokens[i]) for i in range(4)]
    readers = [await join(roomy_server, "busy", tokens[i % 4]) for i in range(16)]
    slow = await stalled_reader(roomy_server, "busy", slow_token)
    body = "x" * 3900  # near the size limit, so the stalled socket's buffers fill sooner
    sloth_left = asyncio.Event()
    sent = [0] * len(senders)

    async def send_until_sloth_leaves(client: ChatClient, n: int) -> list[int]:
        """Closed loop: send, then read until the own echo, recording every id seen."""
        seen: list[int] = []
        while not sloth_left.is_set() and sent[n] < 2000:
            await client.send(f"{n}:{sent[n]}:{body}")
            sent[n] += 1
            while True:
                frame = await client.recv()
                if frame["type"] == "leave" and frame["user"] == "sloth":
                    sloth_left.set()
                if frame["type"] == "message":
                    seen.append(frame["id"])
                    if frame["user"] == f"user{n}" and frame["body"].startswith(f"{n}:"):
                        break
        return seen

    # While the slow client reads nothing at all, the others chat on, until the server gives
    # up on it and tells the room it left.
    sender_views = await asyncio.gather(
        *(send_until_sloth_leaves(c, n) for n, c in enumerate(senders))
    )
    assert sloth_left.is_set()
    total = sum(sent)

    async def drain(client: ChatClient, seen: list[int]) -> list[int]:
        while len(seen) < total:
            seen.append((await client.recv_type("message"))["id"])
        return seen

    views = await asyncio.gather(
        *(drain(c, v) for c, v in zip(senders, sender_views, strict=True)),
        *(drain(c, []) for c in readers),
    )
    # Every other client got every message, in one order.
    assert all(view == views[0] for view in views)
    assert len(set(views[0])) == total

    # The slow client, reading at last, gets what was on the wire, then a close with 1013.
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await slow.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1013


async def test_sockets_killed_mid_broadcast(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    roomy_server = LiveServer(
        settings.model_copy(update={"rate_limit": 0, "max_connections_per_user": 0})
    ).start()
    try:
        await _kill_mid_broadcast(roomy_server, caplog)
    finally:
        roomy_server.stop()


async def _kill_mid_broadcast(roomy_server: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="chatroom")
    async with httpx.AsyncClient(base_url=roomy_server.url) as http:
        tokens = [await register(http, f"user{i}") for i in range(12)]
        survivors = [await join(roomy_server, "busy", tokens[i]) for i in range(2)]
        doomed = [await join(roomy_server, "busy", tokens[i]) for i in range(2, 12)]
        acked: list[int] = []

        async def chatter(client: ChatClient, n: int) -> None:
            with contextlib.suppress(ConnectionClosed):  # this client is killed mid-way
                for i in range(40):
                    await client.send(f"{n}:{i}")
                    await asyncio.sleep(0)

        async def collect_acks(client: ChatClient, user: str) -> None:
            with pytest.raises((ConnectionClosed, TimeoutError)):
                while True:
                    frame = await client.recv(timeout=3)
                    if frame["type"] == "message" and frame["user"] == user:
                        acked.append(frame["id"])

        async def kill_all_at_once() -> None:
            await asyncio.sleep(0.05)
            for client in doomed:
                assert client.ws.transport is not None
                client.ws.transport.abort()  # no close frame: the peer just vanishes

        await asyncio.gather(
            *(chatter(c, n) for n, c in enumerate(doomed)),
            *(collect_acks(c, f"user{n + 2}") for n, c in enumerate(doomed)),
            kill_all_at_once(),
        )
        left: set[str] = set()
        while len(left) < len(doomed):
            left.add((await survivors[0].recv_type("leave"))["user"])
        assert left == {f"user{i}" for i in range(2, 12)}
        stored = {m["id"] for m in await history(http, tokens[0], "busy")}
        assert set(acked) <= stored, "an acknowledged message is missing from the history"
        # The room still works.
        await survivors[1].send("still here")
        while (await survivors[0].recv_type("message"))["body"] != "still here":
            pass
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_store_failure_is_reported_and_nothing_is_broadcast(
    server: LiveServer, http: httpx.AsyncClient, database_url: str
) -> None:
    alice_token = await register(http, "alice")
    alice = await join(server, "r1", alice_token)
    bob = await join(server, "r1", await register(http, "bob"))
    # The database itself refuses this one message, as a failing disk would.
    with sqlite3.connect(make_url(database_url).database or "") as db:
        db.execute(
            "CREATE TRIGGER doomed BEFORE INSERT ON messages WHEN NEW.body LIKE '%doomed%'"
            " BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        )
    await alice.send("doomed message")
    error = await alice.recv_type("error")
    assert error["code"] == "store_failed"
    await alice.send("fine message")
    # bob sees the next message, never the failed one; the server carries on.
    assert (await bob.recv_type("message"))["body"] == "fine message"
    assert [m["body"] for m in await history(http, alice_token)] == ["fine message"]


async def test_a_write_lock_held_elsewhere_delays_the_message_but_nothing_else(
    server: LiveServer, http: httpx.AsyncClient, database_url: str
) -> None:
    """Another process holding SQLite's write lock: the message waits for it (then is
    stored), while the server keeps answering everyone else."""
    token = await register(http, "alice")
    alice = await join(server, "r1", token)
    other = sqlite3.connect(make_url(database_url).database or "", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        await alice.send("behind the lock")
        for _ in range(5):
            started = time.monotonic()
            assert (await http.get("/healthz")).status_code == 200
            assert time.monotonic() - started < 0.5, "the event loop waited for the lock"
            await asyncio.sleep(0.1)
        with pytest.raises(TimeoutError):
            await alice.recv_type("message", timeout=0.2)
    finally:
        other.execute("COMMIT")
        other.close()
    assert (await alice.recv_type("message"))["body"] == "behind the lock"
    assert [m["body"] for m in await history(http, token)] == ["behind the lock"]


async def test_a_client_msg_id_is_a_resend_only_in_its_own_room(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    token = await register(http, "alice")
    in_a = await join(server, "room-a", token)
    await in_a.send("secret of room a", client_msg_id="c-1")
    first = await in_a.recv_type("message")
    in_b = await join(server, "room-b", token)
    await in_b.send("hello room b", client_msg_id="c-1")
    answer = await in_b.recv_type("message")
    assert (answer["room"], answer["body"]) == ("room-b", "hello room b")
    assert answer["id"] != first["id"]
    assert [m["body"] for m in await history(http, token, "room-b")] == ["hello room b"]


async def test_resend_with_same_client_msg_id_is_stored_once(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    alice_token = await register(http, "alice")
    bob_token = await register(http, "bob")
    alice = await join(server, "r1", alice_token)
    bob = await join(server, "r1", bob_token)
    await alice.send("exactly once", client_msg_id="c-1")
    first = await alice.recv_type("message")
    assert first["client_msg_id"] == "c-1"
    assert (await bob.recv_type("message"))["id"] == first["id"]
    await alice.close()

    # After a reconnect the client cannot know whether its send got through: it resends.
    alice = await join(server, "r1", alice_token, query=f"since={first['id']}")
    await alice.send("exactly once", client_msg_id="c-1")
    again = await alice.recv_type("message")
    assert again == first
    # bob is not told twice; the next thing he sees is the next message.
    await bob.send("next", client_msg_id="c-1")  # the same id is bob's own, a new message
    assert (await bob.recv_type("message"))["body"] == "next"
    bodies = [(m["user"], m["body"]) for m in await history(http, alice_token)]
    assert bodies == [("alice", "exactly once"), ("bob", "next")]


async def test_duplicate_client_msg_id_within_one_burst(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    token = await register(http, "alice")
    alice = await join(server, "r1", token)
    for _ in range(3):
        await alice.send("burst", client_msg_id="same")
    frames = [await alice.recv_type("message") for _ in range(3)]
    assert len({f["id"] for f in frames}) == 1
    assert len(await history(http, token)) == 1


def test_sigterm_finishes_writes_and_closes_sockets_with_1001(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "CHATROOM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'term.db'}",
        "CHATROOM_SECRET_KEY": SECRET,
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_health(base)

        async def scenario() -> tuple[int, list[dict[str, Any]]]:
            async with httpx.AsyncClient(base_url=base) as http:
                token = await register(http, "alice")
            live = LiveServer.__new__(LiveServer)
            live.ws_url = f"ws://127.0.0.1:{port}"
            client = await join(live, "r1", token)
            for i in range(20):
                await client.send(f"m{i}")
            server.send_signal(signal.SIGTERM)
            acked = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    frame = await client.recv(timeout=10)
                    if frame["type"] == "message":
                        acked.append(frame)
            assert closed.value.rcvd is not None
            return closed.value.rcvd.code, acked

        code, acked = asyncio.run(scenario())
        # uvicorn re-raises the signal once it has shut down cleanly.
        assert server.wait(timeout=20) in (0, -signal.SIGTERM)
    finally:
        server.kill()
    assert code == 1001
    # Whatever was acknowledged is on disk.
    import sqlite3

    with sqlite3.connect(tmp_path / "term.db") as db:
        stored = {row[0] for row in db.execute("SELECT id FROM messages")}
    assert {m["id"] for m in acked} <= stored
    assert acked, "no message was acknowledged before the stop"


async def test_heartbeat_drops_a_peer_that_vanished_without_a_close(settings: Settings) -> None:
    """A peer that stops answering pings (its network died) leaves the room all the same."""
    live = LiveServer(
        settings.model_copy(update={"ping_interval_seconds": 0.5, "ping_timeout_seconds": 0.5})
    ).start()
    try:
        async with httpx.AsyncClient(base_url=live.url) as http:
            alice = await join(live, "r1", await register(http, "alice"))
            ghost_token = await register(http, "ghost")
        # A raw handshake, then silence: no reads, so no pongs, and no close frame ever.
        ghost = socket.create_connection(("127.0.0.1", live.port))
        ghost.sendall(
            (
                f"GET /items/r1/ws?token={ghost_token} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{live.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        try:
            assert (await alice.recv_type("join"))["user"] == "alice"
            assert await alice.recv_type("join") == {"type": "join", "room": "r1", "user": "ghost"}
            # The peer never answers a ping, so within a few intervals the server drops it.
            leave = await alice.recv_type("leave", timeout=10)
            assert leave == {"type": "leave", "room": "r1", "user": "ghost"}
        finally:
            ghost.close()
    finally:
        live.stop()
