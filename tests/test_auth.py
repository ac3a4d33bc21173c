"""Accounts, tokens and their failures over REST."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.helpers import PASSWORD, LiveServer, register


async def test_register_then_token(http: httpx.AsyncClient) -> None:
    token = await register(http, "alice")
    response = await http.get("/items/r1/messages", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


async def test_token_answer_shape(http: httpx.AsyncClient) -> None:
    await register(http, "alice")
    response = await http.post("/auth/token", data={"username": "alice", "password": PASSWORD})
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 24 * 60 * 60
    assert body["access_token"].count(".") == 2


async def test_taken_username_is_409(http: httpx.AsyncClient) -> None:
    await register(http, "alice")
    response = await http.post("/auth/register", json={"username": "alice", "password": PASSWORD})
    assert response.status_code == 409


@pytest.mark.parametrize(
    "username,password",
    [
        ("al", PASSWORD),  # too short
        ("a" * 33, PASSWORD),  # too long
        ("bad name", PASSWORD),  # space
        ("ünïcode", PASSWORD),
        ("alice", "short"),  # password under 8
    ],
)
async def test_invalid_registration_is_422(
    http: httpx.AsyncClient, username: str, password: str
) -> None:
    response = await http.post("/auth/register", json={"username": username, "password": password})
    assert response.status_code == 422


async def test_wrong_password_and_unknown_user_are_401(http: httpx.AsyncClient) -> None:
    await register(http, "alice")
    wrong = await http.post("/auth/token", data={"username": "alice", "password": "nope-nope"})
    unknown = await http.post("/auth/token", data={"username": "bob", "password": PASSWORD})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.headers["www-authenticate"] == "Bearer"


async def test_passwords_are_stored_as_argon2(http: httpx.AsyncClient, server: LiveServer) -> None:
    import sqlite3

    await register(http, "alice")
    path = server.settings.database_url.split("///", 1)[1]
    with sqlite3.connect(path) as db:
        (stored,) = db.execute("SELECT password_hash FROM users").fetchone()
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored


async def test_closed_registration(settings_closed_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=settings_closed_server.url) as http:
        response = await http.post(
            "/auth/register", json={"username": "alice", "password": PASSWORD}
        )
        page = await http.get("/register")
    assert response.status_code == 403
    assert page.status_code == 403


@pytest.fixture
def settings_closed_server(settings):  # type: ignore[no-untyped-def]
    live = LiveServer(settings.model_copy(update={"open_registration": False})).start()
    yield live
    live.stop()


async def test_healthz(http: httpx.AsyncClient) -> None:
    response = await http.get("/healthz")
    assert response.status_code == 200
    # Monitors and load balancers often probe with HEAD.
    head = await http.head("/healthz")
    assert head.status_code == 200 and head.content == b""


@contextmanager
def full_disk() -> Iterator[None]:
    """No file of this process (the test server's too) may grow past 4 KiB for a while:
    SQLite's next write fails as it does on a full disk. Python ignores SIGXFSZ, so the
    write itself fails, with EFBIG."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


async def test_registration_on_a_full_disk_is_503_and_loses_nothing(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    await register(http, "alice")
    with full_disk():
        api = await http.post("/auth/register", json={"username": "bob", "password": PASSWORD})
        page = await http.post("/register", data={"username": "carol", "password": PASSWORD})
    assert api.status_code == 503
    assert api.json()["detail"].startswith("The server could not store this")
    assert page.status_code == 503 and "set-cookie" not in page.headers
    assert "could not store this (its disk may be full)" in page.text
    assert 'value="carol"' in page.text
    # With room on the disk again, both names can be registered, and alice is still there.
    await register(http, "bob")
    again = await http.post("/register", data={"username": "carol", "password": PASSWORD})
    assert again.status_code == 303
    alice = await http.post("/auth/token", data={"username": "alice", "password": PASSWORD})
    assert alice.status_code == 200


async def test_invalid_requests_never_echo_the_password(http: httpx.AsyncClient) -> None:
    secret = "hunter2"  # too short: refused
    response = await http.post("/auth/register", json={"username": "alice", "password": secret})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "password"]
    assert secret not in response.text
    token = await register(http, "alice")
    long_secret = "x" * 2000  # too long for the new password
    change = await http.post(
        "/auth/password",
        json={"current_password": PASSWORD, "new_password": long_secret},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert change.status_code == 422 and long_secret not in change.text
