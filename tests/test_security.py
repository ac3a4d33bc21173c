"""Who may enter where: room-restricted tokens, Origin checks, revocation, cookies, expiry."""

from __future__ import annotations

import time

import httpx
import pytest
from jose import jwt
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.core.config import Settings
from app.core.security import create_access_token
from tests.helpers import PASSWORD, SECRET, LiveServer, connect, join, register


async def test_rooms_claim_opens_only_those_rooms(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    await register(http, "alice")
    token = create_access_token("alice", key=SECRET, minutes=5, rooms=["ticket-1", "doc:9"])
    welcome, _ = await (await connect(server, "ticket-1", token)).join()
    assert welcome["room"] == "ticket-1"
    with pytest.raises(InvalidStatus) as refused:
        await connect(server, "ticket-2", token)
    assert refused.value.response.status_code == 403
    auth = {"Authorization": f"Bearer {token}"}
    assert (await http.get("/items/doc:9/messages", headers=auth)).status_code == 200
    assert (await http.get("/items/ticket-2/messages", headers=auth)).status_code == 403


async def test_cookie_socket_from_another_site_is_refused(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    token = await register(http, "alice")
    cookie = f"session={token}"
    with pytest.raises(InvalidStatus) as refused:
        await connect(
            server, "r1", additional_headers={"Cookie": cookie}, origin="https://evil.example"
        )
    assert refused.value.response.status_code == 403
    # The server's own pages may, and so may a token holder from anywhere (no ambient cookie).
    own = await connect(server, "r1", additional_headers={"Cookie": cookie}, origin=server.url)
    await own.join()
    with_token = await connect(server, "r1", token, origin="https://evil.example")
    await with_token.join()


async def test_allowed_origins_setting(settings: Settings) -> None:
    live = LiveServer(
        settings.model_copy(update={"allowed_origins": "https://host-app.example"})
    ).start()
    try:
        async with httpx.AsyncClient(base_url=live.url) as http:
            cookie = {"Cookie": f"session={await register(http, 'alice')}"}
            ok = await connect(
                live, "r1", additional_headers=cookie, origin="https://host-app.example"
            )
            await ok.join()
            with pytest.raises(InvalidStatus):
                await connect(live, "r1", additional_headers=cookie, origin="https://other.example")
            # The same origins may post the sign-in form, and no others.
            form = {"username": "alice", "password": PASSWORD}
            for origin, code in (("https://host-app.example", 303), ("https://other.example", 403)):
                signed_in = await http.post("/login", data=form, headers={"Origin": origin})
                assert signed_in.status_code == code
    finally:
        live.stop()


async def test_password_change_revokes_tokens_and_closes_sockets(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    old = await register(http, "alice")
    socket = await join(server, "r1", old)
    auth = {"Authorization": f"Bearer {old}"}
    wrong = await http.post(
        "/auth/password",
        json={"current_password": "not-my-password", "new_password": "a new password"},
        headers=auth,
    )
    assert wrong.status_code == 403
    changed = await http.post(
        "/auth/password",
        json={"current_password": PASSWORD, "new_password": "a new password"},
        headers=auth,
    )
    assert changed.status_code == 200
    fresh = changed.json()["access_token"]
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await socket.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert (await http.get("/items/r1/messages", headers=auth)).status_code == 401
    with pytest.raises(InvalidStatus):
        await connect(server, "r1", old)
    fresh_auth = {"Authorization": f"Bearer {fresh}"}
    assert (await http.get("/items/r1/messages", headers=fresh_auth)).status_code == 200
    await join(server, "r1", fresh)
    relogin = await http.post(
        "/auth/token", data={"username": "alice", "password": "a new password"}
    )
    assert relogin.status_code == 200


async def test_cookie_is_secure_behind_https(server: LiveServer, http: httpx.AsyncClient) -> None:
    await register(http, "alice")
    # uvicorn trusts X-Forwarded-Proto from 127.0.0.1, as from a TLS-terminating proxy.
    response = await http.post(
        "/login",
        data={"username": "alice", "password": PASSWORD},
        headers={"X-Forwarded-Proto": "https"},
    )
    assert response.status_code == 303
    assert "secure" in response.headers["set-cookie"].lower()


async def test_socket_closes_when_its_token_expires(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    await register(http, "alice")
    short = jwt.encode(
        {"sub": "alice", "iat": time.time(), "exp": int(time.time()) + 2}, SECRET, "HS256"
    )
    client = await join(server, "r1", short)
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await client.recv(timeout=10)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "token expired")


def _minted(claims: dict[str, object], headers: dict[str, object] | None = None) -> str:
    """A token as a host sharing the secret might mint it, mistakes included."""
    token: str = jwt.encode({"sub": "alice", **claims}, SECRET, "HS256", headers=headers)
    return token


LATER = int(time.time()) + 3600
LENIENT_TOKENS = {
    # Minted by a host whose clock (or code) is an hour ahead: it would outlive a password
    # change made in that hour.
    "iat in the future": _minted({"iat": time.time() + 3600, "exp": LATER + 3600}),
    "exp as a string": _minted({"exp": str(LATER)}),
    "exp of 2**70": _minted({"exp": 2**70}),
    "exp as a list": _minted({"exp": [LATER]}),
    "exp of Infinity": _minted({"exp": float("inf")}),
    "unknown crit header": _minted({"exp": LATER}, {"crit": ["x-bind"], "x-bind": "device-7"}),
}


@pytest.mark.parametrize("token", LENIENT_TOKENS.values(), ids=LENIENT_TOKENS.keys())
async def test_lenient_tokens_are_refused(
    server: LiveServer, http: httpx.AsyncClient, token: str
) -> None:
    await register(http, "alice")
    # The same host's well-formed token opens both, so the refusals below are the claims'.
    good = _minted({"iat": time.time(), "exp": LATER})
    assert (
        await http.get("/rooms", headers={"Authorization": f"Bearer {good}"})
    ).status_code == 200
    await join(server, "r1", good)
    assert (
        await http.get("/rooms", headers={"Authorization": f"Bearer {token}"})
    ).status_code == 401
    with pytest.raises(InvalidStatus) as refused:
        await connect(server, "r1", token)
    assert refused.value.response.status_code == 403


async def test_logout_revokes_the_cookies_token_and_only_it(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        other_session = await register(http, "alice")
        signed_in = await http.post("/login", data={"username": "alice", "password": PASSWORD})
        assert signed_in.status_code == 303
        token = http.cookies["session"]
        socket = await connect(server, "r1", additional_headers={"Cookie": f"session={token}"})
        await socket.join()
        # Same-site, as the page's own form posts it.
        assert (await http.post("/logout", headers={"Origin": server.url})).status_code == 303
    # A copy of the cookie taken before (another tab, a stolen jar) opens nothing any more.
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await socket.recv(timeout=10)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "signed out")
    async with httpx.AsyncClient(base_url=server.url) as http:
        as_bearer = {"Authorization": f"Bearer {token}"}
        assert (await http.get("/rooms", headers=as_bearer)).status_code == 401
        as_cookie = {"Cookie": f"session={token}"}
        assert (await http.get("/rooms", headers=as_cookie)).status_code == 401
        with pytest.raises(InvalidStatus) as refused:
            await connect(server, "r1", token)
        assert refused.value.response.status_code == 403
        # The user's other sessions stay signed in.
        other = {"Authorization": f"Bearer {other_session}"}
        assert (await http.get("/rooms", headers=other)).status_code == 200
    await join(server, "r1", other_session)
