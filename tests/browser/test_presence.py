"""Who is typing, and which rooms have something new, in a real browser with two users."""

from __future__ import annotations

import asyncio

import pytest

from tests.browser.conftest import LOOP, Browsers, OpenPoster, say
from tests.helpers import LiveServer

try:
    from playwright.async_api import Page, expect
except ImportError:  # the playwright fixture skips (or, in CI, fails) with the reason
    pass

pytestmark = [pytest.mark.browser, LOOP]


async def test_bob_typing_is_shown_to_alice_without_moving_anything(browsers: Browsers) -> None:
    alice = await browsers.open_room("alice", "ticket-1")
    bob = await browsers.open_room("bob", "ticket-1")
    await say(alice, "anyone there?")
    await expect(bob.locator(".message .text")).to_have_text(["anyone there?"])
    line = alice.locator("#typing")
    before = await alice.locator("#scroller").bounding_box()

    await bob.get_by_label("Message", exact=True).press_sequentially("yes, ")
    await expect(line).to_have_text("bob is typing…")
    # The line had its place already: the messages did not move when it appeared.
    assert await alice.locator("#scroller").bounding_box() == before
    await expect(bob.locator("#typing")).to_have_text("")  # not told of one's own typing

    await bob.get_by_label("Message", exact=True).press_sequentially("here")
    await bob.get_by_label("Message", exact=True).press("Enter")
    # Gone the moment bob's message is there, not some seconds later.
    shown = alice.locator(".message[data-id] .text").last
    await expect(shown).to_have_text("yes, here")
    assert await line.text_content() == ""
    assert await alice.locator("#scroller").bounding_box() == before


async def unread_of(page: Page, room: str) -> int:
    response = await page.request.get("/rooms")
    assert response.ok
    counts = {r["room"]: r["unread"] for r in (await response.json())["rooms"]}
    return int(counts[room])


async def test_unread_badge_until_the_room_is_opened(
    browsers: Browsers, server: LiveServer, poster: OpenPoster
) -> None:
    bob = await poster(server, "ticket-2", await browsers.token("bob"))
    await bob.say("first news", "second news")
    lobby = await browsers.new_page("alice")
    await lobby.goto("/chat")
    badge = lobby.locator('#rooms a[href="/chat/ticket-2"] .badge')
    await expect(badge).to_have_text("2 unread")

    room = await browsers.open_room("alice", "ticket-2")
    await expect(room.locator(".message[data-id] .text")).to_have_text(
        ["first news", "second news"]
    )
    # The page marks what it showed as read, shortly after showing it.
    for _ in range(100):
        if not await unread_of(room, "ticket-2"):
            break
        await asyncio.sleep(0.1)
    await lobby.reload()
    await expect(lobby.locator('#rooms a[href="/chat/ticket-2"]')).to_be_visible()
    await expect(badge).to_have_count(0)
