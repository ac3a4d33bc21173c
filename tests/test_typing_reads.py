"""Typing notices and read markers over real sockets: who hears them, the typing throttle,
read markers that never go back, and the unread counts of GET /rooms."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.helpers import ChatClient, LiveServer, join, register


async def until_message(client: ChatClient, body: str) -> list[dict[str, Any]]:
    """The frames client gets up to and including the message with this body."""
    frames = []
    while True:
        frame = await client.recv()
        frames.append(frame)
        if frame["type"] == "message" and frame["body"] == body:
            return frames


def of_type(frames: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [frame for frame in frames if frame["type"] == kind]


async def typing(client: ChatClient) -> None:
    await client.ws.send(json.dumps({"type": "typing"}))


async def read(client: ChatClient, message_id: Any) -> None:
    await client.ws.send(json.dumps({"type": "read", "id": message_id}))


async def unread(http: httpx.AsyncClient, token: str) -> dict[str, int]:
    response = await http.get("/rooms", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    return {r["room"]: r["unread"] for r in response.json()["rooms"]}


async def test_typing_reaches_the_others_once_and_is_not_stored(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    alice_token, bob_token = await register(http, "alice"), await register(http, "bob")
    alice = await join(server, "r1", alice_token)
    alice_tab = await join(server, "r1", alice_token)
    bob = await join(server, "r1", bob_token)
    bob_tab = await join(server, "r1", bob_token)
    # Two within the interval: the second is dropped, silently; the message comes after both.
    await typing(bob)
    await typing(bob)
    await bob.send("done typing")
    for client in (alice, alice_tab):
        seen = of_type(await until_message(client, "done typing"), "typing")
        assert seen == [{"type": "typing", "room": "r1", "user": "bob"}]
    for client in (bob, bob_tab):  # no socket of the typist hears it, nor an error
        frames = await until_message(client, "done typing")
        assert of_type(frames, "typing") == [] and of_type(frames, "error") == []
    # Not stored: neither a new joiner's replay nor REST history holds it.
    carol = await join(server, "r1", await register(http, "carol"))
    await carol.close()
    history = await http.get("/items/r1/messages", headers={"Authorization": f"Bearer {bob_token}"})
    assert [m["body"] for m in history.json()["messages"]] == ["done typing"]


async def test_typing_throttle_holds_across_sockets_and_reconnects(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    alice = await join(server, "r1", await register(http, "alice"))
    bob_token = await register(http, "bob")
    bob = await join(server, "r1", bob_token)
    await typing(bob)
    await bob.close()
    bob = await join(server, "r1", bob_token)  # a reconnect does not reset the interval
    bob_tab = await join(server, "r1", bob_token)
    await typing(bob)
    await typing(bob_tab)
    await bob.send("sentinel")
    seen = of_type(await until_message(alice, "sentinel"), "typing")
    assert seen == [{"type": "typing", "room": "r1", "user": "bob"}]


async def test_read_markers_move_forward_only_and_give_unread_counts(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    alice_token, bob_token = await register(http, "alice"), await register(http, "bob")
    alice = await join(server, "r1", alice_token)
    bob = await join(server, "r1", bob_token)
    bob_tab = await join(server, "r1", bob_token)
    ids = []
    for body in ("one", "two", "three"):
        await alice.send(body)
        ids.append((await alice.recv_type("message"))["id"])
    assert await unread(http, bob_token) == {"r1": 3}
    assert await unread(http, alice_token) == {"r1": 0}, "own messages are never unread"

    await read(bob, ids[1])
    # Each of bob's sockets in the room hears of it, the sender's as an acknowledgement.
    for client in (bob, bob_tab):
        assert await client.recv_type("read") == {"type": "read", "room": "r1", "id": ids[1]}
    assert await unread(http, bob_token) == {"r1": 1}

    await read(bob, ids[0])  # backwards: ignored, not told
    await read(bob_tab, ids[2])
    for client in (bob, bob_tab):
        assert await client.recv_type("read") == {"type": "read", "room": "r1", "id": ids[2]}
    assert await unread(http, bob_token) == {"r1": 0}
    await read(bob, ids[1])
    assert await unread(http, bob_token) == {"r1": 0}, "a marker went back"

    await bob.send("from bob")
    await until_message(bob, "from bob")  # stored
    assert await unread(http, bob_token) == {"r1": 0}
    assert await unread(http, alice_token) == {"r1": 1}
    frames = await until_message(alice, "from bob")
    assert of_type(frames, "read") == [], "another user's read marker reached alice"


async def test_refused_read_markers_get_an_error_and_the_socket_lives(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    alice_token, bob_token = await register(http, "alice"), await register(http, "bob")
    bob = await join(server, "r2", bob_token)
    await bob.send("in r2")
    elsewhere = (await bob.recv_type("message"))["id"]
    bob = await join(server, "r1", bob_token)
    await bob.send("in r1")
    here = (await bob.recv_type("message"))["id"]
    alice = await join(server, "r1", alice_token)
    refusals = [
        (elsewhere, "unknown_message"),  # another room's message
        (here + 1000, "unknown_message"),  # no such message yet
        ("7", "invalid_id"),
        (0, "invalid_id"),
        (True, "invalid_id"),
        (None, "invalid_id"),
    ]
    for message_id, code in refusals:
        await read(alice, message_id)
        error = await alice.recv_type("error")
        assert error["code"] == code, message_id
        assert error["detail"]
        if code == "unknown_message":  # tells it from a refused message
            assert error["id"] == message_id
    assert await unread(http, alice_token) == {"r1": 1, "r2": 1}, "a refused read counted"
    await alice.send("still here")
    assert (await alice.recv_type("message"))["body"] == "still here"
