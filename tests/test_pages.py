"""Browser-facing pages over plain HTTP: login, registration, logout, the chat page."""

from __future__ import annotations

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from app.core.config import Settings
from app.core.security import create_access_token
from tests.helpers import PASSWORD, SECRET, LiveServer, join, register


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


async def test_room_form_explains_a_bad_item_id(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        await register(http, "alice")
        await http.post("/login", data={"username": "alice", "password": PASSWORD})
        response = await http.get("/chat", params={"room": "no spaces please"})
        assert response.status_code == 400
        assert "Item ids are 1 to 64 letters" in response.text
        assert 'value="no spaces please"' in response.text


async def test_register_names_the_field_at_fault_and_keeps_next(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        short = await http.post("/register", data={"username": "dave", "password": "short"})
        assert short.status_code == 400 and "Passwords are 8 to" in short.text
        assert 'value="dave"' in short.text
        ok = await http.post(
            "/register",
            data={"username": "dave", "password": PASSWORD, "next": "/chat/ticket-3"},
        )
        assert ok.status_code == 303 and ok.headers["location"] == "/chat/ticket-3"


async def test_pages_carry_a_strict_content_security_policy(http: httpx.AsyncClient) -> None:
    for path in ("/login", "/register", "/static/chat.js", "/healthz"):
        response = await http.get(path)
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert "frame-ancestors 'none'" in policy
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "same-origin"
    page = (await http.get("/login")).text
    assert "<script>" not in page and " style=" not in page and " on" + "click=" not in page
    # The API docs too: their one inline script is allowed by its hash, nothing else is.
    docs = await http.get("/docs")
    policy = docs.headers["content-security-policy"]
    assert policy.startswith("default-src 'self'; script-src 'self' 'sha256-")
    assert "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    assert docs.headers["x-content-type-options"] == "nosniff"


async def test_only_the_embedded_room_may_be_framed_and_only_by_the_allowed_origins(
    settings: Settings, http: httpx.AsyncClient
) -> None:
    hosts = "https://tickets.example, https://shop.example:8443/"
    live = LiveServer(settings.model_copy(update={"allowed_origins": hosts})).start()
    try:
        async with httpx.AsyncClient(base_url=live.url) as client:
            # No cookie and no token: the page is a shell; the host's token opens the room.
            embed = await client.get("/embed/ticket-42")
            assert embed.status_code == 200
            assert 'data-room="ticket-42"' in embed.text and "data-user" not in embed.text
            allowed = "https://shop.example:8443 https://tickets.example"
            assert f'data-origins="{allowed}"' in embed.text
            policy = embed.headers["content-security-policy"]
            assert f"frame-ancestors {allowed};" in policy
            assert "script-src 'self';" in policy and "connect-src 'self';" in policy
            for path in ("/login", "/chat/ticket-42", "/docs", "/static/chat.js", "/nowhere"):
                policy = (await client.get(path)).headers["content-security-policy"]
                assert "frame-ancestors 'none'" in policy, path
    finally:
        live.stop()
    # With no allowed origins nobody may frame it.
    embed = await http.get("/embed/ticket-42")
    assert "frame-ancestors 'none'" in embed.headers["content-security-policy"]


async def test_rooms_lists_active_rooms_newest_first(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        token = await register(http, "alice")
        assert (await http.get("/rooms")).status_code == 401
        headers = {"Authorization": f"Bearer {token}"}
        empty = await http.get("/rooms", headers=headers)
        assert empty.status_code == 200 and empty.json() == {"rooms": []}
        for room in ("a", "b", "c", "a"):
            client = await join(server, room, token)
            await client.send(f"in {room}")
            await client.recv_type("message")
            await client.close()
        body = (await http.get("/rooms", headers=headers)).json()
        assert [r["room"] for r in body["rooms"]] == ["a", "c", "b"]
        first = body["rooms"][0]
        assert first["last_user"] == "alice" and first["last_message_at"].endswith("Z")
        assert first["last_message_id"] > body["rooms"][1]["last_message_id"]
        limited = (await http.get("/rooms", params={"limit": 1}, headers=headers)).json()
        assert [r["room"] for r in limited["rooms"]] == ["a"]
        assert (await http.get("/rooms", params={"limit": 0}, headers=headers)).status_code == 422
        # A token limited to some rooms lists only those.
        narrow = create_access_token("alice", key=SECRET, minutes=5, rooms=["b", "zzz"])
        only = await http.get("/rooms", headers={"Authorization": f"Bearer {narrow}"})
        assert [r["room"] for r in only.json()["rooms"]] == ["b"]
        nothing = create_access_token("alice", key=SECRET, minutes=5, rooms=[])
        none = await http.get("/rooms", headers={"Authorization": f"Bearer {nothing}"})
        assert none.json() == {"rooms": []}


BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


async def test_a_page_address_that_names_nothing_answers_a_page_with_a_way_back(
    server: LiveServer,
) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        await register(http, "alice")
        await http.post("/login", data={"username": "alice", "password": PASSWORD})
        for path, accept in [
            ("/chat/my%20room", BROWSER_ACCEPT),
            ("/chat/my%20room", "*/*"),  # a page's route answers a page whatever is asked
            ("/chat/a%2Fb", BROWSER_ACCEPT),  # no route at all: a browser asks for HTML
            ("/no-such-page", BROWSER_ACCEPT),
        ]:
            response = await http.get(path, headers={"Accept": accept})
            assert response.status_code == 404, path
            assert response.headers["content-type"].startswith("text/html"), path
            assert "There is no page at this address." in response.text
            assert '<a href="/chat">Back to your rooms</a>' in response.text
            if path.startswith("/chat/"):
                assert "Item ids are 1 to 64 letters" in response.text
        wrong_method = await http.get("/logout", headers={"Accept": BROWSER_ACCEPT})
        assert wrong_method.status_code == 405 and "Back to your rooms" in wrong_method.text
        assert wrong_method.headers["allow"] == "POST"


async def test_api_errors_stay_json_even_for_a_browser(http: httpx.AsyncClient) -> None:
    token = await register(http, "alice")
    html = {"Accept": BROWSER_ACCEPT}
    unknown = await http.get("/chat/a%2Fb", headers={"Accept": "application/json"})
    assert unknown.status_code == 404 and unknown.json() == {"detail": "Not Found"}
    unauthenticated = await http.get("/rooms", headers=html)
    assert unauthenticated.status_code == 401 and unauthenticated.json()["detail"]
    invalid = await http.get(
        "/items/my%20room/messages", headers={**html, "Authorization": f"Bearer {token}"}
    )
    assert invalid.status_code == 422 and invalid.json()["detail"][0]["loc"] == [
        "path",
        "item_id",
    ]
    bad_body = await http.post("/auth/register", json={"username": "x"}, headers=html)
    assert bad_body.status_code == 422 and "detail" in bad_body.json()


async def test_account_page_changes_the_password_and_renews_the_cookie(
    server: LiveServer,
) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/account")).headers["location"] == "/login?next=/account"
        old_token = await register(http, "alice")
        await http.post("/login", data={"username": "alice", "password": PASSWORD})
        form = await http.get("/account")
        assert form.status_code == 200 and 'name="current_password"' in form.text
        socket = await join(server, "r1", old_token)

        async def post(current: str, new: str, repeat: str | None = None) -> httpx.Response:
            data = {"current_password": current, "new_password": new}
            return await http.post("/account", data={**data, "repeat_password": repeat or new})

        for response, code, error in [
            (await post("not my password", "a new password"), 403, "current password is wrong"),
            (await post(PASSWORD, "a new password", "a new passwort"), 400, "passwords differ"),
            (await post(PASSWORD, "short"), 400, "New passwords are 8 to"),
        ]:
            assert response.status_code == code and error in response.text
            assert "set-cookie" not in response.headers
        changed = await post(PASSWORD, "a new password")
        assert changed.status_code == 303 and changed.headers["location"] == "/account?changed=1"
        assert changed.headers["set-cookie"].startswith("session=")
        assert "Your password is changed" in (await http.get("/account?changed=1")).text
        assert (await http.get("/chat")).status_code == 200  # the fresh cookie
        # As POST /auth/password: the old token is refused and its socket closed.
        old = await http.get("/rooms", headers={"Authorization": f"Bearer {old_token}"})
        assert old.status_code == 401
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await socket.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.reason == "password changed"
        login = await http.post(
            "/auth/token", data={"username": "alice", "password": "a new password"}
        )
        assert login.status_code == 200


async def test_chat_page_links_to_the_account_page(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        await register(http, "alice")
        await http.post("/login", data={"username": "alice", "password": PASSWORD})
        assert 'href="/account"' in (await http.get("/chat/r1")).text
