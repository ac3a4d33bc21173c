"""Crowds of logins: the failed-login limit holds under concurrency, and Argon2 work is bounded."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from app.core.config import Settings
from tests.helpers import PASSWORD, LiveServer, register


async def test_concurrent_wrong_passwords_get_no_more_tries_than_the_limit(
    server: LiveServer,
) -> None:
    limit = server.settings.login_failures_per_username
    async with httpx.AsyncClient(
        base_url=server.url, limits=httpx.Limits(max_connections=None), timeout=60
    ) as http:
        await register(http, "alice")
        right = {"username": "alice", "password": PASSWORD}
        for _ in range(limit + 1):  # a login that succeeds is not counted against the limit
            assert (await http.post("/auth/token", data=right)).status_code == 200
        wrong = {"username": "alice", "password": "not her password"}
        answers = await asyncio.gather(*(http.post("/auth/token", data=wrong) for _ in range(200)))
        codes = Counter(answer.status_code for answer in answers)
        assert codes == {401: limit, 429: 200 - limit}
        assert all(int(a.headers["retry-after"]) > 0 for a in answers if a.status_code == 429)
        # The right password is refused too until the window has passed.
        assert (await http.post("/auth/token", data=right)).status_code == 429


@pytest.fixture
def one_check_at_a_time(settings: Settings) -> Iterator[LiveServer]:
    """One Argon2 computation at a time and none waiting; the failure limits are off."""
    live = LiveServer(
        settings.model_copy(
            update={
                "password_hash_concurrency": 1,
                "password_hash_queue": 0,
                "login_failures_per_username": 0,
                "login_failures_per_address": 0,
            }
        )
    ).start()
    yield live
    live.stop()


async def test_logins_beyond_the_argon2_bound_are_told_to_retry(
    one_check_at_a_time: LiveServer,
) -> None:
    async with httpx.AsyncClient(
        base_url=one_check_at_a_time.url, limits=httpx.Limits(max_connections=None), timeout=60
    ) as http:
        # 30 at once, half from the API and half from the page: one is checked, the others
        # arrive while it is, and find no check free.
        form = {"username": "nobody", "password": "some password"}
        api, page = await asyncio.gather(
            asyncio.gather(*(http.post("/auth/token", data=form) for _ in range(15))),
            asyncio.gather(*(http.post("/login", data=form) for _ in range(15))),
        )
        assert {a.status_code for a in api + page} == {401, 503}
        busy_api = [a for a in api if a.status_code == 503]
        busy_page = [a for a in page if a.status_code == 503]
        assert busy_api and busy_page
        for answer in busy_api + busy_page:
            assert answer.headers["retry-after"] == "1"
        assert all("busy" in a.json()["detail"] for a in busy_api)
        for answer in busy_page:
            assert "busy checking other passwords" in answer.text
            assert 'value="nobody"' in answer.text and "set-cookie" not in answer.headers
        # Once the crowd is gone, the check is free again.
        assert (await http.post("/auth/token", data=form)).status_code == 401
