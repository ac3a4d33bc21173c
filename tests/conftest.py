"""Shared fixtures: a migrated SQLite file per test, a real server on a free port, clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from app.core.config import Settings
from app.core.migrate import upgrade
from tests.helpers import SECRET, LiveServer, open_clients


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}"
    upgrade(url)
    return url


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, secret_key=SECRET)


@pytest.fixture
def server(settings: Settings) -> Iterator[LiveServer]:
    live = LiveServer(settings).start()
    yield live
    live.stop()


@pytest.fixture
async def http(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url) as client:
        yield client


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    """Close the sockets a test left open, so none outlives its test."""
    yield
    while open_clients:
        await open_clients.pop().ws.close()
