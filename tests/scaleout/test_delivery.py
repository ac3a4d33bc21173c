"""Two workers, one room: what is said on one is heard on the other; presence is shared;
a revocation made on one worker, or by the `chatroom` command, reaches the other."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.helpers import PASSWORD, ChatClient
from tests.scaleout.conftest import Cluster, ids, new_room, read_messages

pytestmark = pytest.mark.redis


async def test_message_sent_on_one_worker_reaches_both(cluster: Cluster) -> None:
    a, b = cluster.start(2)
    tokens = await cluster.register("alice", "bob")
    room = new_room()
    alice, _, _ = await cluster.join(a, room, tokens["alice"])
    bob, _, _ = await cluster.join(b, room, tokens["bob"])

    await alice.send("hello from a", client_msg_id="a1")
    (echo,) = await read_messages(alice, 1)  # the sender's acknowledgement
    (heard,) = await read_messages(bob, 1)
    assert echo["client_msg_id"] == "a1"
    assert heard == echo

    await bob.send("and back from b")
    (at_b,) = await read_messages(bob, 1)
    (at_a,) = await read_messages(alice, 1)
    assert at_a == at_b
    assert at_a["user"] == "bob" and at_a["body"] == "and back from b"
    assert at_a["id"] > echo["id"]

    stored = await cluster.stored(room, tokens["alice"])
    assert ids(stored) == [echo["id"], at_a["id"]]


async def test_presence_is_shared_between_workers(cluster: Cluster) -> None:
    a, b = cluster.start(2)
    tokens = await cluster.register("alice", "bob", "carol")
    room = new_room()

    def join(user: str) -> dict[str, str]:
        return {"type": "join", "room": room, "user": user}

    def leave(user: str) -> dict[str, str]:
        return {"type": "leave", "room": room, "user": user}

    bob, bob_welcome, _ = await cluster.join(b, room, tokens["bob"])
    assert bob_welcome["online"] == ["bob"]
    assert await bob.recv() == join("bob")
    alice, alice_welcome, _ = await cluster.join(a, room, tokens["alice"])
    assert alice_welcome["online"] == ["alice", "bob"], "bob, connected on b, is not seen on a"
    assert await alice.recv() == join("alice")
    assert await bob.recv() == join("alice")

    carol, carol_welcome, _ = await cluster.join(b, room, tokens["carol"])
    assert carol_welcome["online"] == ["alice", "bob", "carol"]
    assert await alice.recv() == join("carol")

    # A second socket of bob's, on the other worker, is no news; closing the first is no leave.
    bob_on_a, welcome, _ = await cluster.join(a, room, tokens["bob"])
    assert welcome["online"] == ["alice", "bob", "carol"]
    await bob.close()
    await carol.close()
    assert await alice.recv() == leave("carol"), "expected carol's leave, and nothing of bob"

    await bob_on_a.close()
    assert await alice.recv() == leave("bob")
    _, welcome, _ = await cluster.join(b, room, tokens["carol"])
    assert welcome["online"] == ["alice", "carol"]
    assert await alice.recv() == join("carol")


async def test_password_change_closes_sockets_on_every_worker(cluster: Cluster) -> None:
    a, b = cluster.start(2)
    tokens = await cluster.register("alice")
    room = new_room()
    on_b, _, _ = await cluster.join(b, room, tokens["alice"])
    async with httpx.AsyncClient(base_url=a.url) as http:
        changed = await http.post(
            "/auth/password",
            json={"current_password": PASSWORD, "new_password": "another long password"},
            headers={"Authorization": f"Bearer {tokens['alice']}"},
        )
    assert changed.status_code == 200
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await on_b.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "password changed")
    async with httpx.AsyncClient(base_url=b.url) as http:
        old = await http.get(
            f"/items/{room}/messages", headers={"Authorization": f"Bearer {tokens['alice']}"}
        )
    assert old.status_code == 401


async def _closed_with(client: ChatClient) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await client.recv(timeout=15)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def test_delete_user_closes_sockets_on_every_worker(cluster: Cluster) -> None:
    a, b = cluster.start(2)
    tokens = await cluster.register("alice")
    room = new_room()
    on_a, _, _ = await cluster.join(a, room, tokens["alice"])
    on_b, _, _ = await cluster.join(b, room, tokens["alice"])
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHATROOM_")}
    deleted = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "delete-user", "alice"],
        env={**base, "CHATROOM_DATABASE_URL": cluster.database_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert deleted.returncode == 0, deleted.stderr
    assert await _closed_with(on_a) == (1008, "account deleted")
    assert await _closed_with(on_b) == (1008, "account deleted")
    for worker in (a, b):
        with pytest.raises(InvalidStatus):
            await cluster.connect(worker, room, tokens["alice"])


async def test_logout_revokes_the_cookie_on_every_worker(cluster: Cluster) -> None:
    a, b = cluster.start(2)
    await cluster.register("alice")
    room = new_room()
    async with httpx.AsyncClient(base_url=a.url) as http:
        await http.post("/login", data={"username": "alice", "password": PASSWORD})
        cookie = http.cookies["session"]
        on_b, _, _ = await cluster.join(b, room, cookie)
        assert (await http.post("/logout", headers={"Origin": a.url})).status_code == 303
    assert await _closed_with(on_b) == (1008, "signed out")
    with pytest.raises(InvalidStatus):
        await cluster.connect(b, room, cookie)
    async with httpx.AsyncClient(base_url=b.url) as http:
        refused = await http.get("/rooms", headers={"Authorization": f"Bearer {cookie}"})
    assert refused.status_code == 401
