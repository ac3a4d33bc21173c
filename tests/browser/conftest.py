"""Browser tests: Playwright driving Debian's Chromium against a real server.

Without /usr/bin/chromium or the playwright package these tests skip with the reason, unless
CHATROOM_REQUIRE_BROWSER=1 (CI sets it): then they fail, so CI cannot pass without them.
No browser is ever downloaded; Playwright only drives the system's Chromium.

Playwright's sync API marks its own event loop as running in the main thread between calls,
which breaks asyncio.run() there (Alembic's env.py uses it to migrate each test's database).
So these tests use the async API, and one Chromium serves the whole session: the browser and
the tests share a session-scoped event loop (mark modules with LOOP).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import pytest_asyncio
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from app.core.config import Settings
from app.core.security import create_access_token
from tests.helpers import PASSWORD, SECRET, LiveServer

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, Playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
HISTORY_LIMIT = 10  # small, so "load older" has something to load after a few messages
MAX_MESSAGE_CHARS = 200
DESKTOP = {"width": 1280, "height": 800}
WAIT_MS = 5_000  # for actions and expect(); a test may pass a longer one
LOOP = pytest.mark.asyncio(loop_scope="session")


def _unavailable() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is missing: pip install '.[test]'"
    if not CHROMIUM.exists():
        return f"Debian's Chromium is missing at {CHROMIUM}: apt-get install -y chromium"
    return None


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Replaces tests/conftest.py's async one, whose loop is not the browser's."""
    yield


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def playwright() -> AsyncIterator[Playwright]:
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("CHATROOM_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CHATROOM_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        yield driver


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser(playwright: Playwright) -> AsyncIterator[Browser]:
    chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield chromium
    await chromium.close()


@pytest.fixture
def settings(request: pytest.FixtureRequest, database_url: str) -> Settings:
    """The server's settings; a test may override some with indirect parametrization."""
    overrides: dict[str, Any] = getattr(request, "param", {})
    options: dict[str, Any] = {
        "database_url": database_url,
        "secret_key": SECRET,
        "history_limit": HISTORY_LIMIT,
        "max_message_chars": MAX_MESSAGE_CHARS,
        **overrides,
    }
    return Settings(**options)


@dataclass
class Watched:
    """What a page reported that a user would never want: script errors, CSP violations."""

    problems: list[str] = field(default_factory=list)

    def console(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            self.problems.append(f"CSP: {message.text}")

    def page_error(self, error: Exception) -> None:
        self.problems.append(f"script error: {error}")


async def create_account(server: LiveServer, username: str) -> str:
    """Register username over the API; return an access token for it.

    The token is signed here rather than asked for with the password: one Argon2 hash per
    user instead of two keeps the suite quick.
    """
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.post(
            "/auth/register", json={"username": username, "password": PASSWORD}
        )
        assert response.status_code == 201, response.text
    return create_access_token(username, key=SECRET, minutes=60)


class Browsers:
    """Opens signed-in browser contexts (one per user) and checks each page stayed healthy."""

    def __init__(self, browser: Browser, server: LiveServer) -> None:
        self.browser = browser
        self.server = server
        self.tokens: dict[str, str] = {}
        self._contexts: list[BrowserContext] = []
        self._watched: dict[Page, Watched] = {}

    async def token(self, username: str) -> str:
        if username not in self.tokens:
            self.tokens[username] = await create_account(self.server, username)
        return self.tokens[username]

    async def new_page(self, username: str | None = None, **context_options: Any) -> Page:
        """A page in a fresh context, signed in as username (with the session cookie)."""
        options: dict[str, Any] = {"viewport": DESKTOP, **context_options}
        context = await self.browser.new_context(base_url=self.server.url, **options)
        context.set_default_timeout(WAIT_MS)
        self._contexts.append(context)
        if username is not None:
            cookie = {"name": "session", "value": await self.token(username)}
            await context.add_cookies([{**cookie, "url": self.server.url}])  # type: ignore[list-item]
        page = await context.new_page()
        watched = Watched()
        page.on("console", watched.console)
        page.on("pageerror", watched.page_error)
        self._watched[page] = watched
        return page

    def problems(self, page: Page) -> list[str]:
        """What page has reported so far (a test may clear what it provoked on purpose)."""
        return self._watched[page].problems

    async def open_room(self, username: str, room: str, **context_options: Any) -> Page:
        """A signed-in page in room, once its socket is connected."""
        from playwright.async_api import expect

        page = await self.new_page(username, **context_options)
        await page.goto(f"/chat/{room}")
        await expect(page.locator("#status")).to_have_text("Connected")
        return page

    async def close(self) -> None:
        for context in self._contexts:
            await context.close()
        problems = [p for watched in self._watched.values() for p in watched.problems]
        assert not problems, problems


@pytest_asyncio.fixture(loop_scope="session")
async def browsers(browser: Browser, server: LiveServer) -> AsyncIterator[Browsers]:
    from playwright.async_api import expect

    expect.set_options(timeout=WAIT_MS)
    opened = Browsers(browser, server)
    yield opened
    await opened.close()


async def say(page: Page, text: str) -> None:
    """Type text in the message box and press Enter."""
    box = page.get_by_label("Message", exact=True)
    await box.fill(text)
    await box.press("Enter")


class Poster:
    """A plain WebSocket client in a room, to send messages from outside the browser."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def recv(self) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await self.ws.recv())
        return frame

    async def say(self, *bodies: str) -> list[int]:
        """Send each body, one at a time, and wait until it is stored; return the ids.

        A rate_limited refusal is waited out and the message sent again.
        """
        ids: list[int] = []
        for body in bodies:
            await self.ws.send(json.dumps({"type": "message", "body": body}))
            while True:
                frame = await self.recv()
                if frame["type"] == "error" and frame["code"] == "rate_limited":
                    await asyncio.sleep(float(frame.get("retry_after", 0.1)))
                    await self.ws.send(json.dumps({"type": "message", "body": body}))
                    continue
                assert frame["type"] != "error", frame
                if frame["type"] == "message" and frame["body"] == body:
                    ids.append(frame["id"])
                    break
        return ids


OpenPoster = Callable[[LiveServer, str, str], Awaitable[Poster]]


@pytest_asyncio.fixture(loop_scope="session")
async def poster() -> AsyncIterator[OpenPoster]:
    opened: list[Poster] = []

    async def open_poster(server: LiveServer, room: str, token: str) -> Poster:
        client = Poster(await ws_connect(f"{server.ws_url}/items/{room}/ws?token={token}"))
        opened.append(client)
        assert (await client.recv())["type"] == "welcome"
        assert (await client.recv())["type"] == "history"
        return client

    yield open_poster
    for client in opened:
        await client.ws.close()
