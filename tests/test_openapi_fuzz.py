"""Schemathesis against the app's own OpenAPI schema: no request makes the server answer 5xx.

One real server serves the whole module; a registered user's bearer token goes with every
generated request, so the authenticated endpoints are exercised past their auth check (the
unauthenticated ones ignore it). Examples per operation are few, to keep the run short.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import BaseSchema, Case, GenerationMode
from schemathesis.checks import not_a_server_error

from app.core.config import Settings
from app.core.migrate import upgrade
from app.main import create_app
from tests.helpers import PASSWORD, SECRET, LiveServer

FUZZ_USER = "fuzz-user"
MAX_EXAMPLES = 25  # per operation and generation mode: keeps the module well under a minute


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    path: Path = tmp_path_factory.mktemp("fuzz") / "chat.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade(url)
    server = LiveServer(Settings(database_url=url, secret_key=SECRET)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def auth_headers(fuzz_server: LiveServer) -> dict[str, str]:
    """A bearer token of a real user, and a room with messages for history to return."""
    with httpx.Client(base_url=fuzz_server.url) as client:
        response = client.post("/auth/register", json={"username": FUZZ_USER, "password": PASSWORD})
        assert response.status_code == 201, response.text
        response = client.post("/auth/token", data={"username": FUZZ_USER, "password": PASSWORD})
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}


@pytest.fixture(scope="module")
def api_schema(fuzz_server: LiveServer) -> BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")


# Every operation of the schema, known when tests are collected (building the app's schema
# needs no server), so each gets a test of its own and a new endpoint is fuzzed at once.
# (schemathesis.pytest.from_fixture would do this lazily, but it breaks under pytest 9.)
# Invalid data can only be made for an operation that takes some.
_PATHS = create_app(Settings(secret_key=SECRET)).openapi()["paths"]
CASES = [
    pytest.param(method.upper(), path, mode, id=f"{method.upper()} {path} {mode.value}")
    for path, item in _PATHS.items()
    for method, spec in item.items()
    for mode in GenerationMode
    if mode is GenerationMode.POSITIVE or spec.get("parameters") or spec.get("requestBody")
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_no_request_gets_a_server_error(
    api_schema: BaseSchema,
    auth_headers: dict[str, str],
    method: str,
    path: str,
    mode: GenerationMode,
) -> None:
    operation = api_schema[path][method]
    strategy = operation.as_strategy(mode, headers=auth_headers)

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    def no_server_error(case: Case) -> None:
        case.call_and_validate(checks=[not_a_server_error])

    no_server_error()
