"""Live chat in rooms: fan-out, order, isolation, presence, and bad frames."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.helpers import ChatClient, LiveServer, connect, join, register


async def test_message_reaches_sender_and_others(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    alice = await join(server, "r1", await register(http, "alice"))
    bob = await join(server, "r1", await register(http, "bob"))
    await alice.send("hello bob")
    for client in (alice, bob):
        frame = await client.recv_type("message")
        assert frame["body"] == "hello bob"
        assert frame["user"] == "alice"
        assert frame["room"] == "r1"
        assert isinstance(frame["id"], int)
        assert frame["created_at"].endswith("Z")


async def test_two_rooms_three_clients_each_see_their_room_in_one_order(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    tokens = [await register(http, f"user{i}") for i in range(6)]
    rooms = {"ticket-1": tokens[:3], "ticket-2": tokens[3:]}
    clients = {room: [await join(server, room, t) for t in toks] for room, toks in rooms.items()}
    per_client = 10

    async def chatter(client: ChatClient, room: str, n: int) -> None:
        for i in range(per_client):
            await client.send(f"{room}:{n}:{i}")

    await asyncio.gather(
        *(chatter(c, room, n) for room, cs in clients.items() for n, c in enumerate(cs))
    )
    expected = 3 * per_client
    for room, members in clients.items():
        sequences = []
        for client in members:
            seen = []
            while len(seen) < expected:
                frame = await client.recv_type("message")
                assert frame["room"] == room, "a message crossed rooms"
                assert frame["body"].startswith(f"{room}:")
                seen.append((frame["id"], frame["body"]))
            sequences.append(seen)
        assert sequences[0] == sequences[1] == sequences[2], "clients saw different orders"
        ids = [i for i, _ in sequences[0]]
        assert ids == sorted(ids), "messages arrived out of id order"
        for n in range(3):  # each sender's own messages keep their order
            own = [b for _, b in sequences[0] if b.startswith(f"{room}:{n}:")]
            assert own == [f"{room}:{n}:{i}" for i in range(per_client)]


async def test_welcome_join_and_leave(server: LiveServer, http: httpx.AsyncClient) -> None:
    alice_token, bob_token = await register(http, "alice"), await register(http, "bob")
    alice = await join(server, "r1", alice_token)
    assert await alice.recv() == {"type": "join", "room": "r1", "user": "alice"}
    bob = await connect(server, "r1", bob_token)
    welcome, _ = await bob.join()
    assert welcome == {"type": "welcome", "user": "bob", "room": "r1", "online": ["alice", "bob"]}
    assert await alice.recv() == {"type": "join", "room": "r1", "user": "bob"}
    # A second tab of bob's is no news; closing one of two is not a leave either.
    bob2 = await join(server, "r1", bob_token)
    await bob2.close()
    await bob.close()
    assert await alice.recv() == {"type": "leave", "room": "r1", "user": "bob"}


async def test_plain_text_frame_is_a_message(server: LiveServer, http: httpx.AsyncClient) -> None:
    alice = await join(server, "r1", await register(http, "alice"))
    await alice.ws.send("  just text  ")
    frame = await alice.recv_type("message")
    assert frame["body"] == "just text"
    await alice.ws.send("[draft] not JSON, so a message")
    assert (await alice.recv_type("message"))["body"] == "[draft] not JSON, so a message"


@pytest.mark.parametrize(
    "raw,code",
    [
        ("{not json", "invalid_json"),
        ("[1]", "invalid_frame"),  # JSON, but no object: a client that meant a frame
        (" 42 ", "invalid_frame"),
        ('{"type": "message", "body": 5}', "invalid_body"),
        ('{"type": "shout", "body": "x"}', "unknown_type"),
        ('{"type": "message"}', "invalid_body"),
        ('{"type": "message", "body": "   "}', "empty_body"),
        ("   ", "empty_body"),
        ('{"type": "message", "body": "' + "x" * 4001 + '"}', "body_too_long"),
    ],
)
async def test_bad_frame_gets_error_and_connection_lives(
    server: LiveServer, http: httpx.AsyncClient, raw: str, code: str
) -> None:
    alice = await join(server, "r1", await register(http, "alice"))
    await alice.ws.send(raw)
    error = await alice.recv_type("error")
    assert error["code"] == code
    assert error["detail"]
    await alice.send("still here")
    assert (await alice.recv_type("message"))["body"] == "still here"
    response = await http.get(
        "/items/r1/messages", headers={"Authorization": f"Bearer {await _token(http)}"}
    )
    assert [m["body"] for m in response.json()["messages"]] == ["still here"]


async def _token(http: httpx.AsyncClient) -> str:
    response = await http.post(
        "/auth/token", data={"username": "alice", "password": "correct horse battery"}
    )
    token: str = response.json()["access_token"]
    return token


async def test_body_of_exactly_the_limit_is_accepted(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    alice = await join(server, "r1", await register(http, "alice"))
    await alice.send("y" * 4000)
    assert len((await alice.recv_type("message"))["body"]) == 4000


async def test_binary_frame_gets_error(server: LiveServer, http: httpx.AsyncClient) -> None:
    alice = await join(server, "r1", await register(http, "alice"))
    await alice.ws.send(b"\x00\x01")
    assert (await alice.recv_type("error"))["code"] == "binary_unsupported"


async def test_oversized_frame_closes_1009_and_others_carry_on(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    alice = await join(server, "r1", await register(http, "alice"))
    bob = await join(server, "r1", await register(http, "bob"))
    await alice.ws.send("x" * (64 * 1024 + 1))
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await alice.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    await bob.send("after the flood")
    assert (await bob.recv_type("message"))["body"] == "after the flood"


async def test_refusal_names_the_send_it_refuses(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    alice = await join(server, "r1", await register(http, "alice"))
    await alice.send("x" * 4001, client_msg_id="draft-7")
    error = await alice.recv_type("error")
    assert (error["code"], error["client_msg_id"]) == ("body_too_long", "draft-7")
