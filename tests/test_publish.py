"""Posting from a host's backend: POST /items/{id}/messages, as a socket's message would be."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from app.core.config import Settings
from app.core.security import create_access_token
from tests.helpers import SECRET, LiveServer, join, register


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def post(
    http: httpx.AsyncClient, token: str, room: str, body: Any, **extra: Any
) -> httpx.Response:
    return await http.post(
        f"/items/{room}/messages", json={"body": body, **extra}, headers=bearer(token)
    )


async def stored(http: httpx.AsyncClient, token: str, room: str) -> list[dict[str, Any]]:
    response = await http.get(f"/items/{room}/messages?limit=200", headers=bearer(token))
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


async def test_a_post_reaches_the_room_and_a_resend_stores_nothing(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    alice = await register(http, "alice")
    bob = await join(server, "ticket-7", await register(http, "bob"))

    created = await post(http, alice, "ticket-7", "  from the backend  ", client_msg_id="h-1")
    assert created.status_code == 201, created.text
    message = created.json()
    assert (message["user"], message["body"], message["client_msg_id"]) == (
        "alice",
        "from the backend",
        "h-1",
    )
    # The socket sees exactly what the backend was answered: the same message frame.
    assert await bob.recv_type("message") == message

    again = await post(http, alice, "ticket-7", "from the backend", client_msg_id="h-1")
    assert again.status_code == 200, again.text
    assert again.json() == message
    # Nothing new was stored or broadcast: the next frame bob gets is the next message.
    assert (await post(http, alice, "ticket-7", "next")).status_code == 201
    assert (await bob.recv_type("message"))["body"] == "next"
    assert [m["body"] for m in await stored(http, alice, "ticket-7")] == [
        "from the backend",
        "next",
    ]


async def test_refused_posts_store_nothing(
    settings: Settings, server: LiveServer, http: httpx.AsyncClient
) -> None:
    alice = await register(http, "alice")
    too_long = "x" * (settings.max_message_chars + 1)
    for body, extra in (
        ("   ", {}),
        (too_long, {}),
        ("hi", {"client_msg_id": "c" * 65}),
    ):
        response = await post(http, alice, "r1", body, **extra)
        assert response.status_code == 422, (body[:10], response.text)
    # JSON can spell a lone surrogate, which could be neither stored nor sent on.
    response = await http.post(
        "/items/r1/messages",
        content=b'{"body": "\\ud800"}',
        headers={**bearer(alice), "content-type": "application/json"},
    )
    assert response.status_code == 422, response.text
    elsewhere = create_access_token("alice", key=SECRET, minutes=5, rooms=["other"])
    response = await post(http, elsewhere, "r1", "not here")
    assert response.status_code == 403, response.text
    unauthenticated = await http.post("/items/r1/messages", json={"body": "anyone?"})
    assert unauthenticated.status_code == 401
    assert await stored(http, alice, "r1") == []


@pytest.fixture
def strict_server(settings: Settings) -> Iterator[LiveServer]:
    """Two messages at once, then one per hundred seconds: the bucket does not refill."""
    live = LiveServer(settings.model_copy(update={"rate_limit": 0.01, "rate_burst": 2})).start()
    yield live
    live.stop()


async def test_posts_spend_the_same_rate_bucket_as_the_socket(strict_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=strict_server.url) as http:
        token = await register(http, "alice")
        alice = await join(strict_server, "r1", token)
        for body in ("one", "two"):
            await alice.send(body)
            assert (await alice.recv_type("message"))["body"] == body
        refused = await post(http, token, "r1", "three")
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert [m["body"] for m in await stored(http, token, "r1")] == ["one", "two"]


async def test_a_post_the_store_refuses_answers_503(
    server: LiveServer, http: httpx.AsyncClient, database_url: str
) -> None:
    alice = await register(http, "alice")
    with sqlite3.connect(make_url(database_url).database or "") as db:
        db.execute(
            "CREATE TRIGGER doomed BEFORE INSERT ON messages WHEN NEW.body LIKE '%doomed%'"
            " BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        )
    assert (await post(http, alice, "r1", "doomed")).status_code == 503
    assert (await post(http, alice, "r1", "fine")).status_code == 201
    assert [m["body"] for m in await stored(http, alice, "r1")] == ["fine"]
