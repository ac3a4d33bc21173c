"""The API docs in a browser with no internet: Swagger UI whole, from this server alone."""

from __future__ import annotations

import re

import pytest

from tests.browser.conftest import LOOP, Browsers

try:
    from playwright.async_api import Route, expect
except ImportError:  # the playwright fixture skips (or, in CI, fails) with the reason
    pass

pytestmark = [pytest.mark.browser, LOOP]

THIS_MACHINE = re.compile(r"^(https?|wss?)://(127\.0\.0\.1|localhost)(:\d+)?/")


async def test_docs_render_with_no_outside_request(browsers: Browsers) -> None:
    page = await browsers.new_page()
    outside: list[str] = []

    async def refuse(route: Route) -> None:
        outside.append(route.request.url)
        await route.abort()

    await page.route(lambda url: not THIS_MACHINE.match(url), refuse)
    await page.goto("/docs")
    await expect(page.locator(".swagger-ui .info .title")).to_contain_text("chatroom")
    await expect(page.get_by_text("docs/protocol.md")).to_have_attribute(
        "href", "/docs/protocol.md"
    )
    # An operation can be tried from the page, under its Content-Security-Policy.
    await page.locator("#operations-health-healthz_healthz_get .opblock-summary-control").click()
    await page.get_by_role("button", name="Try it out").click()
    await page.get_by_role("button", name="Execute").click()
    await expect(page.locator(".live-responses-table tbody .response-col_status")).to_have_text(
        "200"
    )
    assert outside == []
