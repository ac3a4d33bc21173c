"""Signing up, in and out, and finding a room, as a person in a browser does it."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.browser.conftest import LOOP, Browsers, OpenPoster
from tests.helpers import PASSWORD, LiveServer

try:
    from playwright.async_api import expect
except ImportError:  # the playwright fixture skips (or, in CI, fails) with the reason
    pass

pytestmark = [pytest.mark.browser, LOOP]


async def test_register_sign_out_and_in_with_clear_errors(browsers: Browsers) -> None:
    await browsers.token("alice")  # taken
    page = await browsers.new_page()
    await page.goto("/chat/ticket-9")
    await expect(page).to_have_url(re.compile(r"/login\?next=/chat/ticket-9$"))
    await page.get_by_role("link", name="Create one").click()

    await page.get_by_label("Username").fill("alice")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Create account").click()
    await expect(page.get_by_role("alert")).to_have_text("That username is taken.")
    await expect(page.get_by_label("Username")).to_have_value("alice")

    await page.get_by_label("Username").fill("carol")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Create account").click()
    # Registration signs in and goes on to the room the visitor first asked for.
    await expect(page).to_have_url(re.compile(r"/chat/ticket-9$"))
    await expect(page.locator("#status")).to_have_text("Connected")
    await expect(page.locator(".me")).to_contain_text("carol")

    await page.get_by_role("button", name="Log out").click()
    await expect(page).to_have_url(re.compile(r"/login$"))
    await page.get_by_label("Username").fill("carol")
    await page.get_by_label("Password").fill("not the password")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_have_text("Wrong username or password.")

    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(re.compile(r"/chat$"))
    await expect(page.get_by_role("heading", name="Hello, carol")).to_be_visible()


async def test_logout_ends_access(browsers: Browsers, server: LiveServer) -> None:
    page = await browsers.open_room("alice", "ticket-1")
    await page.get_by_role("button", name="Log out").click()
    await expect(page).to_have_url(re.compile(r"/login$"))
    assert not [c for c in await page.context.cookies() if c["name"] == "session"]
    # The room page, the room list and the history all refuse the signed-out browser.
    await page.goto("/chat/ticket-1")
    await expect(page).to_have_url(re.compile(r"/login\?next=/chat/ticket-1$"))
    assert (await page.request.get("/rooms")).status == 401
    assert (await page.request.get("/items/ticket-1/messages")).status == 401
    # So does the room's socket.
    outcome = await page.evaluate(
        """() => new Promise((resolve) => {
            const ws = new WebSocket(`ws://${location.host}/items/ticket-1/ws`);
            ws.onopen = () => resolve("open");
            ws.onclose = () => resolve("refused");
        })"""
    )
    assert outcome == "refused"
    async with httpx.AsyncClient(base_url=server.url) as http:  # the account still works
        response = await http.post("/login", data={"username": "alice", "password": PASSWORD})
        assert response.is_redirect


async def test_room_list_orders_by_activity_and_opens_rooms_by_id(
    browsers: Browsers, server: LiveServer, poster: OpenPoster
) -> None:
    token = await browsers.token("bob")
    for room in ("ticket-1", "doc:15", "ticket-2", "ticket-1"):
        await (await poster(server, room, token)).say(f"hello {room}")

    page = await browsers.new_page("alice")
    await page.goto("/chat")
    await expect(page.locator("#rooms .room-name")).to_have_text(["ticket-1", "ticket-2", "doc:15"])
    await expect(page.locator("#rooms .room-link").first).to_contain_text("bob")

    await page.locator("#rooms .room-link", has_text="doc:15").click()
    await expect(page).to_have_url(re.compile(r"/chat/doc(:|%3A)15$"))
    await expect(page.locator(".message .text")).to_have_text(["hello doc:15"])
    await expect(page.locator('#rooms [aria-current="page"]')).to_contain_text("doc:15")

    # Any item's room by id; the address names the room, so it can be bookmarked and shared.
    await page.get_by_label("Open a room by item id").fill("product-77")
    await page.get_by_label("Open a room by item id").press("Enter")
    await expect(page).to_have_url(re.compile(r"/chat/product-77$"))
    await expect(page.locator("#status")).to_have_text("Connected")
    await expect(page.locator("#room-start")).to_be_visible()
    shared = await browsers.new_page("bob")
    await shared.goto(page.url)
    await expect(shared.get_by_role("heading", name="product-77")).to_be_visible()


async def test_change_the_password_from_the_chat_page(browsers: Browsers) -> None:
    page = await browsers.open_room("alice", "ticket-5")
    elsewhere = await browsers.open_room("alice", "ticket-5")  # alice's other browser
    await page.get_by_role("link", name="Account").click()
    await expect(page).to_have_url(re.compile(r"/account$"))

    async def submit(current: str) -> None:
        await page.get_by_label("Current password").fill(current)
        await page.get_by_label("New password", exact=True).fill("a brand new password")
        await page.get_by_label("New password again").fill("a brand new password")
        await page.get_by_role("button", name="Change password").click()

    await submit("not the password")
    await expect(page.get_by_role("alert")).to_have_text("Your current password is wrong.")
    await expect(page.get_by_label("Current password")).to_have_attribute("aria-invalid", "true")
    await submit(PASSWORD)
    await expect(page.get_by_role("status")).to_contain_text("Your password is changed.")
    # This browser keeps going with its fresh cookie; the other one was signed out.
    await page.get_by_role("link", name="Back to your rooms").click()
    await page.goto("/chat/ticket-5")
    await expect(page.locator("#status")).to_have_text("Connected")
    await expect(elsewhere.get_by_text("Your session has ended.")).to_be_visible()


async def test_an_address_that_names_no_room_answers_a_page_with_a_way_back(
    browsers: Browsers,
) -> None:
    page = await browsers.new_page("alice")
    for address in ("/chat/my%20room", "/chat/a%2Fb"):
        response = await page.goto(address)
        assert response is not None and response.status == 404
        await expect(page.get_by_role("heading", name="Not Found")).to_be_visible()
        await page.get_by_role("link", name="Back to your rooms").click()
        await expect(page.get_by_role("heading", name="Hello, alice")).to_be_visible()


async def test_another_sites_form_cannot_sign_the_visitor_in(
    browsers: Browsers, server: LiveServer
) -> None:
    """Login CSRF: a page elsewhere posts the sign-in form with the attacker's account, so
    that what the visitor then writes goes to the attacker."""
    await browsers.token("mallory")
    page = await browsers.new_page("alice")
    attack = (
        f'<form method="post" action="{server.url}/login">'
        '<input name="username" value="mallory">'
        f'<input name="password" value="{PASSWORD}">'
        "<button>Claim your prize</button></form>"
    )
    await page.route(
        "http://evil.example/", lambda route: route.fulfill(content_type="text/html", body=attack)
    )
    await page.goto("http://evil.example/")
    await page.get_by_role("button", name="Claim your prize").click()
    await expect(page.get_by_text("A page of another site sent this form")).to_be_visible()
    await page.goto("/chat")
    await expect(page.get_by_role("heading", name="Hello, alice")).to_be_visible()
