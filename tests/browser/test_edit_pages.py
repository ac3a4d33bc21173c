"""Edit and delete in the page, as two people see them in Chromium."""

from __future__ import annotations

import pytest

from tests.browser.conftest import LOOP, Browsers, say
from tests.test_edits import moderator_token

try:
    from playwright.async_api import expect
except ImportError:  # the playwright fixture skips (or, in CI, fails) with the reason
    pass

pytestmark = [pytest.mark.browser, LOOP]

TEXTS = ".message[data-id] .text"


async def test_up_arrow_edits_the_last_own_message_and_the_menu_deletes(
    browsers: Browsers,
) -> None:
    alice = await browsers.open_room("alice", "ticket-1")
    bob = await browsers.open_room("bob", "ticket-1")
    await say(alice, "take this back")
    await say(alice, "helo")
    for page in (alice, bob):
        await expect(page.locator(TEXTS)).to_have_text(["take this back", "helo"])

    box = alice.get_by_label("Message", exact=True)
    await box.press("ArrowUp")  # in the empty box: edit the last own message
    await expect(box).to_have_value("helo")
    await box.press("Escape")  # cancels
    await expect(box).to_have_value("")
    await box.press("ArrowUp")
    await box.fill("hello")
    await box.press("Enter")
    for page in (alice, bob):
        await expect(page.locator(TEXTS)).to_have_text(["take this back", "hello"])
        await expect(page.locator(".message[data-id]").last.locator(".edited")).to_have_text(
            "(edited)"
        )

    # bob moderates nothing: he is offered no delete on alice's messages.
    await expect(bob.locator(".action.delete").first).to_be_hidden()
    first = alice.locator(".message[data-id]").first
    await first.hover()
    await first.get_by_role("button", name="Delete").click()
    for page in (alice, bob):
        await expect(page.locator(TEXTS)).to_have_text(["message deleted", "hello"])

    await bob.reload()  # the replay shows the same
    await expect(bob.locator(TEXTS)).to_have_text(["message deleted", "hello"])
    await expect(bob.locator(".edited")).to_have_text(["(edited)"])

    # The keyboard deletes too: Up arrow, empty the box, Enter.
    await box.press("ArrowUp")
    await expect(box).to_have_value("hello")
    await box.fill("")
    await box.press("Enter")
    await expect(bob.locator(TEXTS)).to_have_text(["message deleted", "message deleted"])


async def test_a_moderator_is_offered_delete_on_everyones_messages(browsers: Browsers) -> None:
    alice = await browsers.open_room("alice", "ticket-1")
    await say(alice, "off topic")
    await browsers.token("mod")  # the account; its page signs in with a moderator's token
    browsers.tokens["mod"] = moderator_token("mod", ["ticket-1"])
    mod = await browsers.open_room("mod", "ticket-1")
    message = mod.locator(".message[data-id]").first
    await message.hover()
    await message.get_by_role("button", name="Delete").click()
    for page in (alice, mod):
        await expect(page.locator(TEXTS)).to_have_text(["message deleted"])
