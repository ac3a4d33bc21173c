"""Security headers on every HTTP response: a strict Content-Security-Policy and friends.

The pages load one stylesheet and one script from /static and talk to the same origin only
(fetch and WebSocket: CSP Level 3 lets 'self' match ws:/wss: on the page's own host), so the
policy allows nothing inline and nothing from elsewhere, and no page may be framed. A response
that sets its own policy keeps it: the API docs add the hash of their one inline script
(app/api/routes/docs.py), and the embedded room may be framed by the allowed origins
(app/api/routes/pages.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def content_security_policy(scripts: Iterable[str] = (), framers: Iterable[str] = ()) -> str:
    """The policy; scripts: more script-src sources (a 'sha256-...' hash); framers: the
    origins whose pages may frame this one (none: no page may)."""
    script_src = " ".join(("'self'", *scripts))
    frame_ancestors = " ".join(framers) or "'none'"
    return (
        f"default-src 'self'; script-src {script_src}; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self'; frame-ancestors {frame_ancestors}; base-uri 'none'; "
        "form-action 'self'"
    )


CONTENT_SECURITY_POLICY = content_security_policy()
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    # Room ids are in page URLs; other sites need not learn them.
    "Referrer-Policy": "same-origin",
}


class SecurityHeaders:
    """ASGI middleware setting HEADERS on HTTP responses (not on WebSocket handshakes)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http":
            # Handed on, not awaited here: no frame of ours held for a socket's whole life.
            return self.app(scope, receive, send)
        return self._http(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
