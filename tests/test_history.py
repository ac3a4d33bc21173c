"""History: replay on join, resume with ?since=, REST pages, and surviving a restart."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.core.config import Settings
from tests.helpers import ChatClient, LiveServer, connect, fill_room, join, register


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


# Each escaped to six bytes of JSON (\u0000): 50 such messages make a 1.2 MB replay, more
# than a default websockets client takes in one frame (1 MiB, else it closes with 1009).
def heavy(count: int) -> list[str]:
    return [f"{i}:" + "\0" * 3990 for i in range(count)]


async def rest_pages(http: httpx.AsyncClient, token: str, query: str) -> list[dict[str, Any]]:
    """Every page of GET /items/big/messages from query on, following has_more: backwards
    (before=) or, with after=, forwards."""
    forwards = query.startswith("after=")
    messages: list[dict[str, Any]] = []
    while True:
        page = (
            await http.get(
                f"/items/big/messages?limit=200&{query}",
                headers={"Authorization": f"Bearer {token}"},
            )
        ).json()
        messages = messages + page["messages"] if forwards else page["messages"] + messages
        if not page["has_more"]:
            return messages
        cursor = page["messages"][-1 if forwards else 0]["id"]
        query = f"after={cursor}" if forwards else f"before={cursor}"


async def test_a_replay_too_big_for_a_default_client_is_cut_and_the_rest_paged_by_rest(
    server: LiveServer, http: httpx.AsyncClient, settings: Settings
) -> None:
    token = await register(http, "alice")
    fill_room(settings.database_url, "big", "alice", heavy(50))
    client = await connect(server, "big", token)  # websockets' default max_size: 1 MiB
    _, history = await client.join()
    assert history["has_more"] is True
    replayed = bodies(history)
    assert 0 < len(replayed) < 50 and replayed == heavy(50)[-len(replayed) :]  # the newest
    older = await rest_pages(http, token, f"before={history['messages'][0]['id']}")
    assert [m["body"] for m in older] + replayed == heavy(50)


async def test_a_resume_too_big_for_one_frame_still_gets_every_message_once(
    server: LiveServer, http: httpx.AsyncClient, settings: Settings
) -> None:
    alice_token, bob_token = await register(http, "alice"), await register(http, "bob")
    fill_room(settings.database_url, "big", "alice", heavy(100))
    bob = await connect(server, "big", bob_token, query="since=0")
    _, history = await bob.join()
    assert history["has_more"] is True
    replayed = bodies(history)
    assert 0 < len(replayed) < 100 and replayed == heavy(100)[: len(replayed)]  # the oldest
    alice = await join(server, "big", alice_token)
    await alice.send("live")  # arrives while bob pages forward
    live = await bob.recv_type("message")
    rest = await rest_pages(http, bob_token, f"after={history['messages'][-1]['id']}")
    # The pages may hold the live message too; a client keys messages by id.
    by_id = {m["id"]: m["body"] for m in [*history["messages"], *rest, live]}
    assert [by_id[i] for i in sorted(by_id)] == [*heavy(100), "live"]
    assert len(history["messages"]) + len(rest) == 101
