"""The room framed by a host's page on another origin (docs/embedding.md), in Chromium.

chatroom runs at 127.0.0.1; the host application is a server of its own on another port,
allowed as http://localhost:<port>. The same host page fetched as http://127.0.0.1:<port> is
another origin, which CHATROOM_ALLOWED_ORIGINS does not name. The browser has no cookies:
the host's token is all the framed room has.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from jose import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from app.core.config import Settings
from app.core.security import create_access_token
from tests.browser.conftest import LOOP, WAIT_MS, Browsers, OpenPoster, Poster
from tests.helpers import SECRET, LiveServer, free_port

try:
    from playwright.async_api import FrameLocator, expect
except ImportError:  # the playwright fixture skips (or, in CI, fails) with the reason
    pass

pytestmark = [pytest.mark.browser, LOOP]

ROOM = "ticket-42"
TEXTS = ".message[data-id] .text"
# The host snippets are the documentation's own, with its placeholders filled in.
DOCS = Path(__file__).resolve().parents[2] / "docs" / "embedding.md"
FRAGMENT, POST_MESSAGE = re.findall(r"```html\n(.*?)```", DOCS.read_text(), re.DOTALL)
DOCS_CHAT_ORIGIN = "https://chat.example.com"
DOCS_TOKEN = "{{ chat_token }}"


class Host:
    """The host application: an item page holding one of the snippets, on a port of its own."""

    def __init__(self, settings: Settings, port: int) -> None:
        self.page = ""
        self.server = LiveServer(settings, port, Starlette(routes=[Route("/ticket", self._page)]))
        self.allowed = f"http://localhost:{port}"
        self.other = self.server.url  # http://127.0.0.1:<port>: not allowed

    async def _page(self, request: Request) -> HTMLResponse:
        return HTMLResponse(self.page)

    def show(self, snippet: str, chat: LiveServer, token: str) -> None:
        framing = snippet.replace(DOCS_CHAT_ORIGIN, chat.url).replace(DOCS_TOKEN, token)
        self.page = f"<!doctype html><title>Ticket 42</title><h1>Ticket 42</h1>{framing}"


@pytest.fixture
def host_port() -> int:
    return free_port()


@pytest.fixture
def settings(settings: Settings, host_port: int) -> Settings:
    return settings.model_copy(update={"allowed_origins": f"http://localhost:{host_port}"})


@pytest.fixture
def host(settings: Settings, host_port: int) -> Iterator[Host]:
    host = Host(settings, host_port)
    host.server.start()
    yield host
    host.server.stop()


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def server_log(server: LiveServer, host: Host) -> Iterator[list[str]]:
    """Every line uvicorn logs from now on: requests (access) and sockets (error).

    After both servers have started: each start sets uvicorn's loggers to warnings only.
    """
    handler = Lines()
    loggers = [logging.getLogger(name) for name in ("uvicorn.access", "uvicorn.error")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
    yield handler.lines
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest_asyncio.fixture(loop_scope="session")
async def bob(
    browsers: Browsers, server: LiveServer, poster: OpenPoster, server_log: list[str]
) -> Poster:
    """bob in the room (his socket is in the log), who has said hello; alice has an account
    too, which the host signs her in to."""
    await browsers.token("alice")
    client = await poster(server, ROOM, await browsers.token("bob"))
    await client.say("hello from bob")
    return client


def room_token(username: str, minutes: int = 15, name: str | None = None) -> str:
    """What the host mints: for one user, for this item only, short-lived; with the user's
    display name when given."""
    token = create_access_token(username, key=SECRET, minutes=minutes, rooms=[ROOM])
    if name is None:
        return token
    return str(jwt.encode(jwt.get_unverified_claims(token) | {"name": name}, SECRET, "HS256"))


async def heard(client: Poster) -> dict[str, Any]:
    """The next message the plain WebSocket client receives."""

    async def next_message() -> dict[str, Any]:
        while (frame := await client.recv())["type"] != "message":
            pass
        return frame

    return await asyncio.wait_for(next_message(), WAIT_MS / 1000)


async def say_in(frame: FrameLocator, text: str) -> None:
    box = frame.get_by_label("Message", exact=True)
    await box.fill(text)
    await box.press("Enter")


def assert_kept_out_of_the_log(lines: list[str], sockets: int, *tokens: str) -> None:
    """No line holds a token, although the log has the embed page and each socket opened."""
    assert any(f'"GET /embed/{ROOM} HTTP/1.1" 200' in line for line in lines), lines
    opened = [line for line in lines if f'"WebSocket /items/{ROOM}/ws?' in line]
    assert len(opened) == sockets and all("ws?token=[redacted]" in line for line in opened), lines
    assert not [line for line in lines for token in tokens if token in line]


async def test_a_host_page_frames_the_room_with_the_token_in_the_fragment(
    browsers: Browsers, server: LiveServer, host: Host, bob: Poster, server_log: list[str]
) -> None:
    token = room_token("alice", name="Alice Smith")
    host.show(FRAGMENT, server, token)

    page = await browsers.new_page()
    await page.goto(f"{host.allowed}/ticket")
    frame = page.frame_locator("iframe")
    await expect(frame.locator("#status")).to_have_text("Connected")
    await expect(frame.locator(TEXTS)).to_have_text(["hello from bob"])
    await expect(frame.locator("#online li")).to_have_text(["alice (you)", "bob"])

    await say_in(frame, "hello from the ticket page")
    message = await heard(bob)
    assert (message["user"], message["body"]) == ("alice", "hello from the ticket page")
    assert message["name"] == "Alice Smith"  # the host's display name, shown by the page
    await expect(frame.locator(".message.own .author")).to_have_text(["Alice Smith"])
    await bob.say("hi alice")
    await expect(frame.locator(TEXTS)).to_have_text(
        ["hello from bob", "hello from the ticket page", "hi alice"]
    )
    await expect(frame.locator(".message.own .text")).to_have_text(["hello from the ticket page"])

    # The token left the frame's address at once, and it was never in a cookie nor a log.
    assert [f.url for f in page.frames[1:]] == [f"{server.url}/embed/{ROOM}"]
    assert await page.context.cookies() == []
    assert_kept_out_of_the_log(server_log, 2, token)  # bob's socket and the frame's


async def test_a_token_posted_by_the_host_opens_and_reopens_the_room(
    browsers: Browsers, server: LiveServer, host: Host, bob: Poster, server_log: list[str]
) -> None:
    expired = room_token("alice", minutes=-1)
    host.show(POST_MESSAGE, server, expired)

    page = await browsers.new_page()
    await page.goto(f"{host.allowed}/ticket")
    frame = page.frame_locator("iframe")
    await expect(frame.locator("#status")).to_have_text("Signed out")
    await expect(frame.get_by_role("alert")).to_have_text(
        "Your sign-in has expired. Reload the page to keep chatting."
    )
    await expect(frame.get_by_label("Message", exact=True)).to_be_disabled()

    # The host renews the token, as its page may do at any time.
    fresh = room_token("alice")
    await page.evaluate(
        """([token, chat]) =>
            document.querySelector("iframe").contentWindow.postMessage({token}, chat)""",
        [fresh, server.url],
    )
    await expect(frame.locator("#status")).to_have_text("Connected")
    await expect(frame.get_by_role("alert")).to_be_hidden()
    await expect(frame.locator(TEXTS)).to_have_text(["hello from bob"])
    await say_in(frame, "posted in")
    message = await heard(bob)
    assert (message["user"], message["body"]) == ("alice", "posted in")
    assert await page.context.cookies() == []
    assert_kept_out_of_the_log(server_log, 3, expired, fresh)  # bob's, refused, reopened


async def test_a_page_of_an_origin_not_allowed_cannot_frame_the_room(
    browsers: Browsers, server: LiveServer, host: Host
) -> None:
    await browsers.token("alice")
    host.show(FRAGMENT, server, room_token("alice"))

    page = await browsers.new_page()
    async with page.expect_console_message(lambda m: "frame-ancestors" in m.text) as refusal:
        await page.goto(f"{host.other}/ticket")
    # Chromium says why: the room names the origin that may frame it, and this is not it.
    assert f'"frame-ancestors {host.allowed}"' in (await refusal.value).text
    assert [f.url for f in page.frames[1:]] == ["chrome-error://chromewebdata/"]
    await expect(page.frame_locator("iframe").locator("#messages")).to_have_count(0)
    browsers.problems(page).clear()  # the refusal was the point
