"""Limits with clear answers: send rate, connections per user, failed logins."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from app.core.config import Settings
from tests.helpers import PASSWORD, LiveServer, connect, join, register


@pytest.fixture
def strict_server(settings: Settings) -> Iterator[LiveServer]:
    live = LiveServer(
        settings.model_copy(
            update={
                "rate_limit": 2.0,
                "rate_burst": 3,
                "max_connections_per_user": 2,
                "login_failures_per_username": 3,
                "login_failures_per_address": 5,
                "login_lockout_seconds": 60.0,
            }
        )
    ).start()
    yield live
    live.stop()


async def stored_bodies(http: httpx.AsyncClient, token: str, room: str = "r1") -> list[str]:
    response = await http.get(
        f"/items/{room}/messages", headers={"Authorization": f"Bearer {token}"}
    )
    return [m["body"] for m in response.json()["messages"]]


async def test_flood_is_rate_limited_and_nothing_extra_is_stored(strict_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=strict_server.url) as http:
        token = await register(http, "alice")
        alice = await join(strict_server, "r1", token)
        for i in range(10):
            await alice.send(f"flood {i}")
        accepted, limited = [], []
        while len(accepted) + len(limited) < 10:
            frame = await alice.recv()
            if frame["type"] == "message":
                accepted.append(frame["body"])
            elif frame["type"] == "error":
                assert frame["code"] == "rate_limited"
                assert 0 < frame["retry_after"] <= 1 / 2.0
                limited.append(frame)
        # The burst of 3 passes (a fourth may trickle in as the bucket refills), the rest not.
        assert 3 <= len(accepted) <= 4
        assert sorted(await stored_bodies(http, token)) == sorted(accepted)
        # The socket is still open and the limit lets a message through after a pause.
        await alice.send("later")
        while True:
            frame = await alice.recv()
            if frame["type"] == "message":
                break
            await alice.send("later")  # limited: retry, as a client honouring retry_after would
        assert frame["body"] == "later"


async def test_reconnecting_does_not_reset_the_rate_limit(strict_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=strict_server.url) as http:
        token = await register(http, "alice")
    alice = await join(strict_server, "r1", token)
    for i in range(3):  # the whole burst
        await alice.send(f"burst {i}")
    for _ in range(3):
        assert (await alice.recv_type("message"))["body"].startswith("burst")
    await alice.close()
    again = await join(strict_server, "r1", token)
    await again.send("right away")
    assert (await again.recv_type("error"))["code"] == "rate_limited"


async def test_rate_limit_is_per_user_across_sockets(strict_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=strict_server.url) as http:
        alice_token, bob_token = await register(http, "alice"), await register(http, "bob")
        tab1 = await join(strict_server, "r1", alice_token)
        tab2 = await join(strict_server, "r2", alice_token)
        bob = await join(strict_server, "r1", bob_token)
        for i in range(3):
            await tab1.send(f"tab1 {i}")
        await tab2.send("tab2")
        assert (await tab2.recv_type("error"))["code"] == "rate_limited"
        await bob.send("bob is not alice")
        assert (await bob.recv_type("message"))["body"] in {"bob is not alice"} | {
            f"tab1 {i}" for i in range(3)
        }


async def test_connections_per_user_are_capped_with_a_reason(strict_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=strict_server.url) as http:
        token = await register(http, "alice")
        first = await join(strict_server, "r1", token)
        await join(strict_server, "r2", token)
        third = await connect(strict_server, "r3", token)
        with pytest.raises(ConnectionClosed) as closed:
            await third.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1008
        assert "too many connections" in closed.value.rcvd.reason
        # The open ones keep working, and closing one frees a place.
        await first.send("still fine")
        assert (await first.recv_type("message"))["body"] == "still fine"
        await first.close()
        await join(strict_server, "r3", token)


async def test_failed_logins_lock_the_username_for_a_while(strict_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=strict_server.url) as http:
        await register(http, "alice")
        for _ in range(3):
            wrong = await http.post("/auth/token", data={"username": "alice", "password": "x" * 9})
            assert wrong.status_code == 401
        locked = await http.post("/auth/token", data={"username": "alice", "password": PASSWORD})
        assert locked.status_code == 429
        assert 0 < int(locked.headers["retry-after"]) <= 60
        page = await http.post("/login", data={"username": "alice", "password": PASSWORD})
        assert page.status_code == 429 and "set-cookie" not in page.headers


async def test_failed_logins_lock_the_address(strict_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=strict_server.url) as http:
        await register(http, "alice")
        for i in range(5):  # five different usernames, one address
            wrong = await http.post("/auth/token", data={"username": f"u{i}", "password": "x" * 9})
            assert wrong.status_code == 401
        locked = await http.post("/auth/token", data={"username": "alice", "password": PASSWORD})
        assert locked.status_code == 429


async def test_limits_set_to_zero_are_off(settings: Settings) -> None:
    live = LiveServer(
        settings.model_copy(update={"rate_limit": 0, "max_connections_per_user": 0})
    ).start()
    try:
        async with httpx.AsyncClient(base_url=live.url) as http:
            token = await register(http, "alice")
            sockets = [await join(live, f"r{i}", token) for i in range(25)]
            for i in range(40):
                await sockets[0].send(f"m{i}")
            bodies = [(await sockets[0].recv_type("message"))["body"] for _ in range(40)]
            assert bodies == [f"m{i}" for i in range(40)]
    finally:
        live.stop()
