"""The API's own description: /docs without internet, the WebSocket told, every refusal listed."""

from __future__ import annotations

import base64
import hashlib
import re

import httpx

from app.core.config import Settings
from app.main import create_app
from tests.helpers import SECRET

SCHEMA = create_app(Settings(secret_key=SECRET)).openapi()
OPERATIONS = {
    f"{method.upper()} {path}": operation
    for path, item in SCHEMA["paths"].items()
    for method, operation in item.items()
}


def test_every_endpoint_that_needs_a_user_documents_401_and_its_403s() -> None:
    authenticated = {name for name, op in OPERATIONS.items() if op.get("security")}
    assert authenticated == {
        "POST /auth/password",
        "GET /items/{item_id}/messages",
        "POST /items/{item_id}/messages",
        "GET /rooms",
    }
    for name in authenticated:
        assert "401" in OPERATIONS[name]["responses"], name
    for name in (
        "POST /auth/password",
        "GET /items/{item_id}/messages",
        "POST /items/{item_id}/messages",
        "POST /auth/register",
    ):
        assert "403" in OPERATIONS[name]["responses"], name
    refusal = OPERATIONS["GET /rooms"]["responses"]["401"]["content"]["application/json"]
    assert refusal["schema"] == {"$ref": "#/components/schemas/ErrorOut"}


def test_the_description_tells_of_the_websocket_and_links_the_protocol() -> None:
    description = SCHEMA["info"]["description"]
    assert "/items/{item_id}/ws" in description
    assert "[docs/protocol.md](/docs/protocol.md)" in description


async def test_docs_are_served_from_this_server_under_a_strict_policy(
    http: httpx.AsyncClient,
) -> None:
    page = await http.get("/docs")
    assert page.status_code == 200
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text), "loads from elsewhere"
    for asset in re.findall(r"""(?:src|href)=["']?(/[^"' >]+)""", page.text):
        assert (await http.get(asset)).status_code == 200, asset
    # The policy allows exactly the page's inline script, by its hash.
    (script,) = re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'self' 'sha256-{digest}';" in page.headers["content-security-policy"]
    protocol = await http.get("/docs/protocol.md")
    assert protocol.status_code == 200 and protocol.text.startswith("# Protocol")
    assert (await http.get("/redoc")).status_code == 404  # it would need inline styles
