"""Connection trouble in a real browser: a server restart, and messages refused for pace."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from app.core.config import Settings
from tests.browser.conftest import LOOP, Browsers, OpenPoster, say
from tests.helpers import LiveServer

try:
    from playwright.async_api import expect
except ImportError:  # the playwright fixture skips (or, in CI, fails) with the reason
    pass

pytestmark = [pytest.mark.browser, LOOP]

TEXTS = ".message[data-id] .text"
RECONNECT_MS = 20_000  # backoff tops out at 15 s; it is a second or two here


async def test_restart_reconnects_and_shows_what_was_missed_once(
    browsers: Browsers, server: LiveServer, settings: Settings, poster: OpenPoster
) -> None:
    room = "ticket-1"
    bob_token = await browsers.token("bob")
    alice = await browsers.open_room("alice", room)
    await (await poster(server, room, bob_token)).say("before 1", "before 2")
    await expect(alice.locator(TEXTS)).to_have_text(["before 1", "before 2"])

    server.stop()
    status = alice.locator("#status")
    await expect(status).to_contain_text(re.compile("Offline|Reconnecting"))
    await expect(alice.get_by_role("button", name="Retry now")).to_be_visible()
    # Typed while offline: kept on screen, sent once the connection is back.
    await say(alice, "typed while offline")
    await expect(alice.locator(".message.pending")).to_contain_text("waiting for connection")

    # Meanwhile bob talks through another server process on the same database.
    other = LiveServer(settings).start()
    try:
        await (await poster(other, room, bob_token)).say("while away 1", "while away 2")
    finally:
        other.stop()

    restarted = LiveServer(settings, port=server.port).start()
    try:
        await expect(status).to_have_text("Connected", timeout=RECONNECT_MS)
        expected = ["before 1", "before 2", "while away 1", "while away 2", "typed while offline"]
        await expect(alice.locator(TEXTS)).to_have_text(expected)
        await expect(alice.locator(".message.pending")).to_have_count(0)
        ids = await alice.locator(".message[data-id]").evaluate_all(
            "nodes => nodes.map((node) => Number(node.dataset.id))"
        )
        assert len(set(ids)) == len(ids) == len(expected)
        assert ids == sorted(ids)
        # The server agrees: everything stored once, in this order.
        await alice.reload()
        await expect(alice.locator(TEXTS)).to_have_text(expected)
    finally:
        restarted.stop()


@pytest.mark.parametrize("settings", [{"rate_limit": 0.2, "rate_burst": 1}], indirect=True)
async def test_rate_limit_is_explained_next_to_the_box(browsers: Browsers) -> None:
    alice = await browsers.open_room("alice", "ticket-1")
    box = alice.get_by_label("Message", exact=True)
    await say(alice, "first")
    await expect(alice.locator(TEXTS)).to_have_text(["first"])
    await say(alice, "second, too soon")
    error = alice.locator("#send-form").get_by_role("alert")
    await expect(error).to_contain_text(re.compile(r"Try again in \d+ s\."))
    await expect(box).to_have_value("second, too soon")
    await expect(alice.locator(".message")).to_have_count(1)


@pytest.mark.parametrize("settings", [{"send_buffer_bytes": 3000}], indirect=True)
async def test_a_resume_longer_than_one_replay_brings_the_edits_after_it_too(
    browsers: Browsers, server: LiveServer, settings: Settings, poster: OpenPoster
) -> None:
    """The replay holds at most half the send buffer: the rest comes over REST, edits of
    messages the page already showed included."""
    room = "ticket-1"
    bob_token = await browsers.token("bob")
    alice = await browsers.open_room("alice", room)
    [old] = await (await poster(server, room, bob_token)).say("said before the restart")
    await expect(alice.locator(TEXTS)).to_have_text(["said before the restart"])

    server.stop()
    away = [f"said while away, number {n:02}" for n in range(20)]  # over 1500 bytes of frames
    other = LiveServer(settings).start()
    try:
        bob = await poster(other, room, bob_token)
        await bob.say(*away)
        edit = json.dumps({"type": "edit", "id": old, "body": "edited while away"})
        await bob.ws.send(edit)
        while (frame := await bob.recv())["type"] != "edit":
            assert frame["type"] != "error" or frame["code"] == "rate_limited", frame
            if frame["type"] == "error":  # bob has just said 20 things: wait, then again
                await asyncio.sleep(frame["retry_after"])
                await bob.ws.send(edit)
    finally:
        other.stop()

    restarted = LiveServer(settings, port=server.port).start()
    try:
        await expect(alice.locator("#status")).to_have_text("Connected", timeout=RECONNECT_MS)
        await expect(alice.locator(TEXTS)).to_have_text(["edited while away", *away])
    finally:
        restarted.stop()
