"""Who may open a room socket: refusals happen at the handshake, over real sockets."""

from __future__ import annotations

import base64
import json
import logging
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from jose import jwt
from websockets.exceptions import InvalidStatus

from app.core.security import create_access_token
from tests.helpers import SECRET, LiveServer, connect, register


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def forged_tokens() -> dict[str, str]:
    exp = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())
    return {
        "garbage": "not-a-jwt",
        "wrong_key": jwt.encode({"sub": "alice", "exp": exp}, "another-key", algorithm="HS256"),
        "alg_none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'sub': 'alice', 'exp': exp})}.",
        "expired": create_access_token("alice", key=SECRET, minutes=-5),
        "no_exp": jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"),
        # A valid token for an unknown user is a host's, and makes the account
        # (tests/test_host_tokens.py); one whose sub no user could have is refused.
        "invalid_sub": create_access_token("not a user!", key=SECRET, minutes=5),
        "hs512": jwt.encode({"sub": "alice", "exp": exp}, SECRET, algorithm="HS512"),
    }


async def expect_refused(server: LiveServer, room: str = "r1", **kwargs: object) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await connect(server, room, **kwargs)  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403


async def test_no_credentials_is_refused(server: LiveServer) -> None:
    await expect_refused(server)


@pytest.mark.parametrize("kind", sorted(forged_tokens()))
async def test_bad_token_in_query_is_refused(
    server: LiveServer, http: httpx.AsyncClient, kind: str
) -> None:
    await register(http, "alice")
    await expect_refused(server, token=forged_tokens()[kind])


@pytest.mark.parametrize("kind", sorted(forged_tokens()))
async def test_bad_token_in_cookie_is_refused(
    server: LiveServer, http: httpx.AsyncClient, kind: str
) -> None:
    await register(http, "alice")
    cookie = {"Cookie": f"session={forged_tokens()[kind]}"}
    await expect_refused(server, additional_headers=cookie)


async def test_good_token_via_query_and_cookie(server: LiveServer, http: httpx.AsyncClient) -> None:
    token = await register(http, "alice")
    by_query = await connect(server, "r1", token)
    by_cookie = await connect(server, "r1", additional_headers={"Cookie": f"session={token}"})
    for client in (by_query, by_cookie):
        welcome, _ = await client.join()
        assert welcome["user"] == "alice"
        await client.close()


@pytest.mark.parametrize("room", ["has%20space", "a" * 65, "semi;colon", "%C3%A9"])
async def test_invalid_room_id_is_refused(
    server: LiveServer, http: httpx.AsyncClient, room: str
) -> None:
    token = await register(http, "alice")
    await expect_refused(server, room=room, token=token)


@pytest.mark.parametrize("since", ["-1", "abc", "1.5", "", str(2**63)])
async def test_since_that_is_not_a_message_id_is_refused(
    server: LiveServer, http: httpx.AsyncClient, since: str
) -> None:
    token = await register(http, "alice")
    await expect_refused(server, token=token, query=f"since={since}")


async def test_since_of_the_largest_id_is_accepted(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    token = await register(http, "alice")
    client = await connect(server, "r1", token, query=f"since={2**63 - 1}")
    _, history = await client.join()
    assert history["messages"] == []
    await client.close()


async def test_bearer_header_opens_the_socket_for_non_browser_clients(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    token = await register(http, "alice")
    client = await connect(server, "r1", additional_headers={"Authorization": f"Bearer {token}"})
    welcome, _ = await client.join()
    assert welcome["user"] == "alice"
    await expect_refused(server, additional_headers={"Authorization": "Bearer not-a-jwt"})


async def test_the_log_says_why_a_handshake_was_refused_and_never_shows_the_token(
    server: LiveServer, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chatroom.auth")
    token = create_access_token("alice", key=SECRET, minutes=5, rooms=["other"])
    good = await register(http, "alice")
    await expect_refused(server, token=token)
    await expect_refused(server, token=good, query="since=abc")
    await expect_refused(server, token=forged_tokens()["wrong_key"])
    reasons = [r.getMessage() for r in caplog.records if r.name == "chatroom.auth"]
    assert reasons == [
        "refused socket /items/r1/ws: your token does not open this room",
        "refused socket /items/r1/ws: invalid since",
        "refused socket /items/r1/ws: authentication required",
    ]
    assert not any(t in r.getMessage() for r in caplog.records for t in (token, good))
