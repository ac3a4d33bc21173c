"""Browser-facing pages over plain HTTP: login, registration, logout, the chat page."""

from __future__ import annotations

import httpx

from tests.conftest import PASSWORD, LiveServer, register


async def test_login_form_and_bad_login(http: httpx.AsyncClient) -> None:
    await register(http, "alice")
    form = await http.get("/login")
    assert form.status_code == 200 and 'name="password"' in form.text
    bad = await http.post("/login", data={"username": "alice", "password": "wrong-password"})
    assert bad.status_code == 401
    assert "Wrong username or password" in bad.text
    assert "set-cookie" not in bad.headers


async def test_good_login_sets_session_cookie_and_opens_chat(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        await register(http, "alice")
        response = await http.post(
            "/login", data={"username": "alice", "password": PASSWORD, "next": "/chat/ticket-7"}
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/chat/ticket-7"
        cookie = response.headers["set-cookie"].lower()
        assert cookie.startswith("session=")
        assert "httponly" in cookie and "samesite=lax" in cookie
        assert "secure" not in cookie  # plain http here
        page = await http.get("/chat/ticket-7")
        assert page.status_code == 200
        assert 'data-room="ticket-7"' in page.text and 'data-user="alice"' in page.text


async def test_login_never_redirects_off_site(http: httpx.AsyncClient) -> None:
    await register(http, "alice")
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        response = await http.post(
            "/login", data={"username": "alice", "password": PASSWORD, "next": target}
        )
        assert response.headers["location"] == "/chat"


async def test_chat_page_needs_login(http: httpx.AsyncClient) -> None:
    response = await http.get("/chat/ticket-7")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/chat/ticket-7"


async def test_register_page_creates_account_and_signs_in(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        taken = await register(http, "bob")
        assert taken
        clash = await http.post("/register", data={"username": "bob", "password": PASSWORD})
        assert clash.status_code == 409 and "taken" in clash.text
        invalid = await http.post("/register", data={"username": "x", "password": PASSWORD})
        assert invalid.status_code == 400 and "set-cookie" not in invalid.headers
        ok = await http.post("/register", data={"username": "carol", "password": PASSWORD})
        assert ok.status_code == 303 and ok.headers["set-cookie"].startswith("session=")
        assert (await http.get("/chat")).status_code == 200


async def test_logout_clears_the_cookie(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        await register(http, "alice")
        await http.post("/login", data={"username": "alice", "password": PASSWORD})
        assert (await http.get("/chat")).status_code == 200
        response = await http.post("/logout")
        assert response.status_code == 303
        assert (
            'session=""' in response.headers["set-cookie"]
            or "Max-Age=0" in response.headers["set-cookie"]
        )
        assert (await http.get("/chat")).status_code == 303


async def test_room_form_without_javascript(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        await register(http, "alice")
        await http.post("/login", data={"username": "alice", "password": PASSWORD})
        response = await http.get("/chat?room=doc:15")
        assert response.headers["location"] == "/chat/doc:15"
