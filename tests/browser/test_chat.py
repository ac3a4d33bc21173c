"""The chat view in a real browser: live messages, history, scrolling, errors, safety."""

from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from tests.browser.conftest import LOOP, MAX_MESSAGE_CHARS, Browsers, OpenPoster, say
from tests.helpers import LiveServer

try:
    from playwright.async_api import expect
except ImportError:  # the playwright fixture skips (or, in CI, fails) with the reason
    pass

pytestmark = [pytest.mark.browser, LOOP]

MESSAGES = ".message[data-id]"
TEXTS = ".message[data-id] .text"


async def test_two_people_chat_live_both_ways(browsers: Browsers) -> None:
    alice = await browsers.open_room("alice", "ticket-1")
    # Bob reads in Kolkata (UTC+05:30) with 24-hour clocks: times are shown in his zone.
    bob = await browsers.open_room("bob", "ticket-1", timezone_id="Asia/Kolkata", locale="en-GB")
    await expect(alice.locator(".notice")).to_have_text(["bob joined"])
    await expect(alice.locator("#online li")).to_have_text(["alice (you)", "bob"])
    await expect(bob.locator("#online li")).to_have_text(["alice", "bob (you)"])

    box = alice.get_by_label("Message", exact=True)
    await say(alice, "hello bob")
    await expect(box).to_have_value("")
    for page in (alice, bob):
        await expect(page.locator(TEXTS)).to_have_text(["hello bob"])
    await expect(alice.locator(MESSAGES)).to_have_class(re.compile(r"\bown\b"))
    await expect(bob.locator(MESSAGES)).not_to_have_class(re.compile(r"\bown\b"))
    await expect(bob.locator(f"{MESSAGES} .author")).to_have_text(["alice"])
    time = bob.locator(f"{MESSAGES} time")
    sent_at = datetime.fromisoformat(await time.get_attribute("datetime") or "")
    await expect(time).to_have_text(f"{sent_at.astimezone(ZoneInfo('Asia/Kolkata')):%H:%M}")

    # Shift+Enter starts a new line; Enter sends.
    reply = bob.get_by_label("Message", exact=True)
    await reply.press_sequentially("line one")
    await reply.press("Shift+Enter")
    await reply.press_sequentially("line two")
    await expect(reply).to_have_value("line one\nline two")
    await reply.press("Enter")
    for page in (alice, bob):
        await expect(page.locator(TEXTS)).to_have_text(["hello bob", "line one\nline two"])
    await expect(alice.locator(f"{MESSAGES} .author").last).to_have_text("bob")

    await bob.close()
    await expect(alice.locator(".notice")).to_have_text(["bob joined", "bob left"])
    await expect(alice.locator("#online li")).to_have_text(["alice (you)"])


async def test_message_text_is_shown_as_text_and_never_run(
    browsers: Browsers, server: LiveServer, poster: OpenPoster
) -> None:
    bodies = [
        "<img src=x onerror=alert(1)>",
        "<script>alert(2)</script>",
        '"><svg onload=alert(3)>',
        "<b>not bold</b>",
    ]
    dialogs: list[str] = []
    alice = await browsers.open_room("alice", "ticket-1")
    bob = await browsers.open_room("bob", "ticket-1")
    for page in (alice, bob):
        page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    for body in bodies:
        await say(alice, body)
    for page in (alice, bob):
        await expect(page.locator(TEXTS)).to_have_text(bodies)
        assert await page.locator(".messages img, .messages script, .messages svg").count() == 0
    # From the history too, after a reload.
    await bob.reload()
    await expect(bob.locator(TEXTS)).to_have_text(bodies)
    assert await bob.locator(".messages b, .messages img").count() == 0
    # Another person's message comes through the same path.
    await (await poster(server, "ticket-1", await browsers.token("mallory"))).say(bodies[0])
    await expect(bob.locator(TEXTS).last).to_have_text(bodies[0])
    assert dialogs == []

    # And should markup ever slip in some other way, the CSP refuses inline script.
    async with bob.expect_console_message(lambda m: "Content Security Policy" in m.text):
        await bob.evaluate(
            "document.body.insertAdjacentHTML('beforeend', "
            '\'<img src="data:," onerror="window.pwned = 1">\')'
        )
    assert all("Content Security Policy" in p for p in browsers.problems(bob))
    browsers.problems(bob).clear()
    assert await bob.evaluate("window.pwned") is None
    assert dialogs == []


async def test_history_on_reload_and_load_older(
    browsers: Browsers, server: LiveServer, poster: OpenPoster
) -> None:
    bob = await poster(server, "ticket-1", await browsers.token("bob"))
    await bob.say(*(f"message {n}" for n in range(1, 26)))
    alice = await browsers.open_room("alice", "ticket-1")
    # The newest CHATROOM_HISTORY_LIMIT (10 here) on joining.
    await expect(alice.locator(TEXTS)).to_have_text([f"message {n}" for n in range(16, 26)])
    older = alice.get_by_role("button", name="Load older messages")
    await expect(alice.locator("#room-start")).to_be_hidden()

    await older.click()
    await expect(alice.locator(TEXTS)).to_have_count(25)
    await expect(alice.locator(TEXTS)).to_have_text([f"message {n}" for n in range(1, 26)])
    await expect(older).to_be_hidden()
    await expect(alice.locator("#room-start")).to_be_visible()
    # The reader keeps their place: what was just below the button is still in view.
    await expect(alice.get_by_text("message 16", exact=True)).to_be_in_viewport()
    await expect(alice.get_by_text("message 1", exact=True)).not_to_be_in_viewport()

    # Scrolled up, a new message does not pull the reader down: a marker appears instead.
    scroller = alice.locator("#scroller")
    await scroller.evaluate("el => { el.scrollTop = 0 }")
    await bob.say("are you there?")
    marker = alice.locator("#new-marker")
    await expect(marker).to_have_text("1 new message")
    await expect(alice.get_by_text("are you there?")).not_to_be_in_viewport()
    assert await scroller.evaluate("el => el.scrollTop") == 0
    await marker.click()
    await expect(alice.get_by_text("are you there?")).to_be_in_viewport()
    await expect(marker).to_be_hidden()
    # At the bottom, new messages simply appear in view.
    await bob.say("still here")
    await expect(alice.get_by_text("still here")).to_be_in_viewport()
    await expect(marker).to_be_hidden()

    await say(alice, "my own words")
    await expect(alice.locator(TEXTS).last).to_have_text("my own words")
    await alice.reload()
    await expect(alice.locator(TEXTS)).to_have_text(
        [f"message {n}" for n in range(19, 26)] + ["are you there?", "still here", "my own words"]
    )
    await expect(alice.locator(MESSAGES).last).to_have_class(re.compile(r"\bown\b"))


@pytest.mark.parametrize("settings", [{"send_buffer_bytes": 600}], indirect=True)
async def test_a_replay_cut_to_fit_the_send_buffer_loads_the_rest_on_request(
    browsers: Browsers, server: LiveServer, poster: OpenPoster
) -> None:
    """A history frame takes at most half a socket's send buffer (300 bytes here): the
    newest message does not fit, so the replay holds none, and says older ones exist."""
    bob = await poster(server, "ticket-1", await browsers.token("bob"))
    bodies = ["message 1", "message 2", "x" * MAX_MESSAGE_CHARS]
    await bob.say(*bodies)
    alice = await browsers.open_room("alice", "ticket-1")
    older = alice.get_by_role("button", name="Load older messages")
    await expect(older).to_be_visible()
    await expect(alice.locator(TEXTS)).to_have_count(0)
    await older.click()
    await expect(alice.locator(TEXTS)).to_have_text(bodies)
    await expect(older).to_be_hidden()


async def test_refused_message_is_explained_next_to_the_box(browsers: Browsers) -> None:
    alice = await browsers.open_room("alice", "ticket-1")
    box = alice.get_by_label("Message", exact=True)
    too_long = "x" * (MAX_MESSAGE_CHARS + 1)
    await box.fill(too_long)
    await expect(alice.locator("#counter")).to_have_text(
        f"{MAX_MESSAGE_CHARS + 1} / {MAX_MESSAGE_CHARS}"
    )
    await expect(alice.locator("#counter")).to_have_class(re.compile(r"\bover\b"))
    await box.press("Enter")
    error = alice.locator("#send-form").get_by_role("alert")
    await expect(error).to_have_text(
        f"That message is too long: the limit is {MAX_MESSAGE_CHARS} characters."
    )
    await expect(box).to_have_value(too_long)  # nothing typed is lost
    await expect(alice.locator(".message")).to_have_count(0)

    await box.fill("short enough")
    await box.press("Enter")
    await expect(alice.locator(TEXTS)).to_have_text(["short enough"])
    await expect(error).to_be_hidden()


async def test_keyboard_alone(browsers: Browsers) -> None:
    alice = await browsers.open_room("alice", "ticket-1")
    box = alice.get_by_label("Message", exact=True)
    await expect(box).to_be_focused()  # ready to type on arrival
    await alice.keyboard.type("sent with the keyboard")
    await alice.keyboard.press("Enter")
    await expect(alice.locator(TEXTS)).to_have_text(["sent with the keyboard"])
    await alice.keyboard.press("Tab")
    await expect(alice.get_by_role("button", name="Send")).to_be_focused()
    # The conversation scrolls from the keyboard too, and shows that it has the focus.
    await alice.keyboard.press("Shift+Tab")
    await alice.keyboard.press("Shift+Tab")
    await expect(alice.locator("#scroller")).to_be_focused()
    outline = await alice.locator("#scroller").evaluate("el => getComputedStyle(el).outlineStyle")
    assert outline != "none"
    # The first stop on the page skips straight to the box.
    skip = alice.get_by_role("link", name="Skip to the message box")
    await skip.focus()
    await expect(skip).to_be_in_viewport()
    await alice.keyboard.press("Enter")
    await expect(box).to_be_focused()


async def test_phone_width(browsers: Browsers) -> None:
    phone = {"viewport": {"width": 375, "height": 667}, "is_mobile": True, "has_touch": True}
    alice = await browsers.open_room("alice", "ticket-1", **phone)
    for n in range(3):
        await say(alice, f"a fairly long message number {n} that has to wrap on a narrow phone")
    await expect(alice.locator(MESSAGES)).to_have_count(3)
    assert await alice.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    await expect(alice.get_by_label("Message", exact=True)).to_be_in_viewport()
    await expect(alice.get_by_role("button", name="Send")).to_be_in_viewport()
    await expect(alice.get_by_role("heading", name=re.compile("^Online"))).to_be_in_viewport()
    await expect(alice.locator(MESSAGES).last).to_be_in_viewport()
    # The room list moves to its own page, one tap away.
    await expect(alice.locator(".rooms-panel")).to_be_hidden()
    await alice.locator(".brand").tap()
    await expect(alice.locator("#rooms .room-name")).to_have_text(["ticket-1"])
    assert await alice.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


@pytest.mark.parametrize("path", ["/chat", "/login", "/register"])
async def test_pages_load_without_policy_violations(browsers: Browsers, path: str) -> None:
    page = await browsers.new_page("alice" if path == "/chat" else None)
    response = await page.goto(path)
    assert response is not None and response.ok
    policy = await response.header_value("content-security-policy")
    assert policy is not None and "script-src 'self'" in policy
    await expect(page.locator("h1")).to_be_visible()
    # Browsers.close() fails the test on any CSP violation or script error the page logged.
