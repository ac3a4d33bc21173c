"""The interactive API docs at /docs, whole without internet.

Swagger UI's script and stylesheet come from the fastapi-offline package (FastAPI's recipe
"Custom Docs UI Static Assets (Self-Hosting)"), not from a CDN. The page's one inline script
is allowed by its hash, so the docs keep the strict Content-Security-Policy of every page.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

from app.api.headers import content_security_policy
from app.core.config import resource

ASSETS = "/docs/static"
SWAGGER_UI = Path(fastapi_offline.__file__).parent / "static"
PROTOCOL = "/docs/protocol.md"

DESCRIPTION = f"""\
A self-hosted chat server: each item of a host application (a ticket, a document) has a live
chat room.

**Signing in.** `POST /auth/token` trades a username and password for a bearer token (the
**Authorize** button here does it for you); the pages use the `session` cookie instead. An
endpoint answers 401 without valid credentials and 403 when they do not allow the request.

**The room socket** is a WebSocket, which this list cannot show:
`/items/{{item_id}}/ws?token=<token>` (or an `Authorization: Bearer` header, or the cookie),
with `&since=<id>` to resume after the last message seen. The server sends `welcome`,
`history`, then `message`, `join`, `leave` and `error` frames; a client sends
`{{"type":"message","body":"..."}}`. A refused handshake is an HTTP 403. Every frame, error
code and close code is described in [docs/protocol.md]({PROTOCOL}).
"""

router = APIRouter(include_in_schema=False)


def install(app: FastAPI) -> None:
    """Swagger UI at /docs with its assets; FastAPI's own docs (CDN) are turned off."""
    app.mount(ASSETS, StaticFiles(directory=SWAGGER_UI), name="swagger-ui")
    app.include_router(router)


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} API",
        swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS}/swagger-ui.css",
        swagger_favicon_url="/static/icon.svg",
        # The validator badge would send the schema's address to validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None},
    )
    inline = re.findall(r"<script>(.*?)</script>", bytes(page.body).decode(), re.DOTALL)
    page.headers["Content-Security-Policy"] = content_security_policy(map(_sha256, inline))
    return page


@router.get(PROTOCOL)
async def protocol() -> Response:
    """The protocol the description links to, from this installation."""
    return PlainTextResponse(resource("docs/protocol.md").read_text(encoding="utf-8"))


def _sha256(script: str) -> str:
    digest = hashlib.sha256(script.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"
