"""History: replay on join, resume with ?since=, REST pages, and surviving a restart."""

from __future__ import annotations

import httpx
import pytest

from app.core.config import Settings
from tests.helpers import ChatClient, LiveServer, connect, join, register


async def send_and_ack(client: ChatClient, bodies: list[str]) -> list[int]:
    ids = []
    for body in bodies:
        await client.send(body)
        ids.append((await client.recv_type("message"))["id"])
    return ids


def bodies(frame: dict[str, object]) -> list[str]:
    return [m["body"] for m in frame["messages"]]  # type: ignore[attr-defined]


async def test_join_replays_last_history_limit_oldest_first(database_url: str) -> None:
    live = LiveServer(
        Settings(database_url=database_url, secret_key="k" * 40, history_limit=5)
    ).start()
    try:
        async with httpx.AsyncClient(base_url=live.url) as http:
            token = await register(http, "alice")
            alice = await join(live, "r1", token)
            await send_and_ack(alice, [f"m{i}" for i in range(8)])
            other_room = await join(live, "r2", token)
            await send_and_ack(other_room, ["elsewhere"])
            again = await connect(live, "r1", token)
            _, history = await again.join()
        assert history["room"] == "r1"
        assert bodies(history) == ["m3", "m4", "m5", "m6", "m7"]
        assert history["has_more"] is True
    finally:
        live.stop()


async def test_since_replays_exactly_the_missed_messages(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    alice_token, bob_token = await register(http, "alice"), await register(http, "bob")
    alice = await join(server, "r1", alice_token)
    bob = await join(server, "r1", bob_token)
    seen = await send_and_ack(alice, ["one", "two"])
    last_seen_by_bob = (await bob.recv_type("message"))["id"]
    assert last_seen_by_bob == seen[0]
    await bob.close()
    await send_and_ack(alice, ["three", "four"])
    bob = await connect(server, "r1", bob_token, query=f"since={last_seen_by_bob}")
    _, history = await bob.join()
    assert bodies(history) == ["two", "three", "four"]
    assert history["has_more"] is False
    await alice.send("five")  # live messages follow without a gap or repeat
    assert (await bob.recv_type("message"))["body"] == "five"


async def test_since_with_nothing_new_is_empty(server: LiveServer, http: httpx.AsyncClient) -> None:
    token = await register(http, "alice")
    alice = await join(server, "r1", token)
    [last] = await send_and_ack(alice, ["only"])
    again = await connect(server, "r1", token, query=f"since={last}")
    _, history = await again.join()
    assert history["messages"] == []


async def test_rest_history_pages_backwards_and_forwards(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    token = await register(http, "alice")
    auth = {"Authorization": f"Bearer {token}"}
    alice = await join(server, "r1", token)
    ids = await send_and_ack(alice, [f"m{i}" for i in range(7)])

    newest = (await http.get("/items/r1/messages?limit=3", headers=auth)).json()
    assert [m["body"] for m in newest["messages"]] == ["m4", "m5", "m6"]
    assert newest["has_more"] is True and newest["room"] == "r1"

    older = (await http.get(f"/items/r1/messages?limit=3&before={ids[4]}", headers=auth)).json()
    assert [m["body"] for m in older["messages"]] == ["m1", "m2", "m3"]
    assert older["has_more"] is True
    oldest = (await http.get(f"/items/r1/messages?limit=3&before={ids[1]}", headers=auth)).json()
    assert [m["body"] for m in oldest["messages"]] == ["m0"]
    assert oldest["has_more"] is False

    after = (await http.get(f"/items/r1/messages?limit=4&after={ids[1]}", headers=auth)).json()
    assert [m["body"] for m in after["messages"]] == ["m2", "m3", "m4", "m5"]
    assert after["has_more"] is True
    message = after["messages"][0]
    assert set(message) == {"id", "room", "user", "body", "created_at"}


async def test_rest_history_with_session_cookie(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    token = await register(http, "alice")
    response = await http.get("/items/r1/messages", headers={"Cookie": f"session={token}"})
    assert response.status_code == 200
    assert response.json() == {"room": "r1", "messages": [], "has_more": False}


async def test_rest_history_needs_credentials(http: httpx.AsyncClient) -> None:
    assert (await http.get("/items/r1/messages")).status_code == 401
    bad = await http.get("/items/r1/messages", headers={"Authorization": "Bearer forged"})
    assert bad.status_code == 401


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=201", "limit=x", "before=0", "after=-1", "before=abc"]
)
async def test_rest_history_rejects_bad_parameters(http: httpx.AsyncClient, query: str) -> None:
    token = await register(http, "alice")
    response = await http.get(
        f"/items/r1/messages?{query}", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 422


async def test_message_survives_a_restart(settings: Settings) -> None:
    first = LiveServer(settings).start()
    async with httpx.AsyncClient(base_url=first.url) as http:
        token = await register(http, "alice")
        alice = await join(first, "r1", token)
        await send_and_ack(alice, ["before restart"])
        await alice.close()
    first.stop()

    second = LiveServer(settings).start()
    try:
        # The same token still works: the key did not change with the restart.
        again = await connect(second, "r1", token)
        _, history = await again.join()
        assert bodies(history) == ["before restart"]
    finally:
        second.stop()
