"""Take docs/screenshot.png: two people chatting in a room, seen by one of them.

    python -m tests.browser.screenshot [path] [--phone]

Starts a real server on a free port with a temporary database, and drives /usr/bin/chromium.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from playwright.async_api import Page, async_playwright, expect

from app.core.config import Settings
from app.core.migrate import upgrade
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, create_account
from tests.helpers import SECRET, LiveServer

ROOM = "ticket-42"
CONVERSATION = [
    ("maria", "Morning! The export on ticket-42 times out for accounts with > 10k rows."),
    ("sam", "I can reproduce it. The CSV writer buffers everything before streaming."),
    ("maria", "Could we stream it in pages of 1,000?"),
    ("sam", "Yes, that's the plan. Draft PR in an hour;\nI'll ping you here."),
    ("maria", "Perfect, thanks!"),
]

OTHER_ROOMS = {
    "maria": [("release-2.4", "Release notes are drafted, please have a look.")],
    "sam": [("ticket-40", "Fixed in 2.3.1, closing.")],
}


async def say(page: Page, text: str) -> None:
    box = page.get_by_label("Message", exact=True)
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if i:
            await box.press("Shift+Enter")
        await box.press_sequentially(line)
    before = await page.locator(".message[data-id]").count()
    await box.press("Enter")
    await expect(page.locator(".message[data-id]")).to_have_count(before + 1)


async def take(server: LiveServer, path: Path, phone: bool) -> None:
    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        pages: dict[str, Page] = {}
        for name in ("maria", "sam"):
            token = await create_account(server, name)
            size = (
                {"width": 390, "height": 780}
                if phone and name == "maria"
                else {"width": 1200, "height": 720}
            )
            context = await browser.new_context(
                base_url=server.url, viewport=size, device_scale_factor=1
            )
            await context.add_cookies([{"name": "session", "value": token, "url": server.url}])
            pages[name] = page = await context.new_page()
            for other, text in OTHER_ROOMS.get(name, []):
                await page.goto(f"/chat/{other}")
                await expect(page.locator("#status")).to_have_text("Connected")
                await say(page, text)
        for page in pages.values():  # maria first, so that she sees sam join
            await page.goto(f"/chat/{ROOM}")
            await expect(page.locator("#status")).to_have_text("Connected")
        for name, text in CONVERSATION:
            await say(pages[name], text)
        shot = pages["maria"]
        await expect(shot.locator(".message[data-id]")).to_have_count(len(CONVERSATION))
        await expect(shot.locator("#rooms .room-link")).to_have_count(3)
        await expect(shot.locator("#rooms .room-name").first).to_have_text(ROOM)
        await shot.get_by_label("Message", exact=True).fill("Great, I'll review it")
        await shot.screenshot(path=str(path))
        await browser.close()


def main(path: Path, phone: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/chat.db"
        upgrade(url)  # before the event loop: Alembic's env.py runs one of its own
        server = LiveServer(Settings(database_url=url, secret_key=SECRET)).start()
        try:
            asyncio.run(take(server, path, phone))
        finally:
            server.stop()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(Path(args[0] if args else "docs/screenshot.png"), "--phone" in sys.argv)
