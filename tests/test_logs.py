"""An access token never reaches uvicorn's logs, however its query parameter is spelled."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import LiveServer, connect, register


@pytest.fixture
def uvicorn_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """What uvicorn logs at INFO (its loggers do not propagate to pytest's handler)."""
    loggers = [logging.getLogger(name) for name in ("uvicorn.access", "uvicorn.error")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.INFO)
        logger.addHandler(caplog.handler)
    yield caplog
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(caplog.handler)
        logger.setLevel(level)


@pytest.mark.parametrize("name", ["%74oken", "t%6Fken", "access%5Ftoken"])  # `token=`: test_cli
async def test_a_token_in_the_query_is_redacted_under_any_spelling_of_its_name(
    server: LiveServer, http: httpx.AsyncClient, uvicorn_log: pytest.LogCaptureFixture, name: str
) -> None:
    token = await register(http, "alice")
    if "access" not in name:  # the socket reads `token` as Starlette decodes it
        client = await connect(server, "r1", query=f"{name}={token}")
        await client.join()
    await http.get(f"/items/r1/messages?since=0&{name}={token}")
    logged = [record.getMessage() for record in uvicorn_log.records]
    assert any(f"{name}=[redacted]" in line for line in logged), logged
    assert not any(token in line for line in logged)
