"""Test helpers: a real server on a free port, a WebSocket chat client, a webhook host."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import uvicorn
import websockets
from sqlalchemy.engine import make_url
from starlette.types import ASGIApp
from websockets.asyncio.client import ClientConnection

from app.core.config import Settings
from app.main import create_app
from app.server import uvicorn_options

SECRET = "test-secret-key-that-is-long-enough-for-hs256"
PASSWORD = "correct horse battery"
RECV_TIMEOUT = 5.0
# Every table the revisions make, named so that one missing from both the models and the
# migrations is noticed too (tests/test_migrations.py, tests/scaleout/).
MIGRATED_TABLES = {
    "alembic_version",
    "users",
    "messages",
    "moderators",
    "revocations",
    "webhook_events",
    "read_markers",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_health(base_url: str, seconds: float = 20) -> None:
    """Wait until a server started in another process answers /healthz."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{base_url}/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server did not come up"
        time.sleep(0.1)


class LiveServer:
    """uvicorn serving a fresh app on a real socket, in a thread of its own."""

    def __init__(
        self, settings: Settings, port: int | None = None, app: ASGIApp | None = None
    ) -> None:
        self.settings = settings
        self.app = app  # chatroom's own (create_app(settings)) when None
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> LiveServer:
        config = uvicorn.Config(
            self.app or create_app(self.settings),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            **uvicorn_options(self.settings),
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=15)
            self._server = None


async def register(http: httpx.AsyncClient, username: str, password: str = PASSWORD) -> str:
    """Create an account and return a bearer token for it."""
    response = await http.post("/auth/register", json={"username": username, "password": password})
    assert response.status_code == 201, response.text
    response = await http.post("/auth/token", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def fill_room(database_url: str, room: str, author: str, bodies: list[str]) -> None:
    """Store messages straight into the database (sending many large ones over a socket
    would take the rate limit's time); the room must not be in the replay cache yet."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    with sqlite3.connect(make_url(database_url).database or "") as connection:
        connection.executemany(
            "INSERT INTO messages (room, author, body, created_at) VALUES (?, ?, ?, ?)",
            [(room, author, body, now) for body in bodies],
        )


open_clients: list[ChatClient] = []


class ChatClient:
    """A real WebSocket client that reads JSON frames with a timeout."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        open_clients.append(self)

    async def recv(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        return frame

    async def recv_type(self, kind: str, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        """The next frame of this type, skipping others (presence notices, say)."""
        while True:
            frame = await self.recv(timeout)
            if frame["type"] == kind:
                return frame

    async def send(self, body: str, **extra: Any) -> None:
        await self.ws.send(json.dumps({"type": "message", "body": body, **extra}))

    async def join(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Read the welcome and history frames every connection starts with."""
        welcome = await self.recv()
        assert welcome["type"] == "welcome", welcome
        history = await self.recv()
        assert history["type"] == "history", history
        return welcome, history

    async def close(self) -> None:
        await self.ws.close()


async def connect(
    server: LiveServer, room: str, token: str | None = None, query: str = "", **kwargs: Any
) -> ChatClient:
    params = "&".join(p for p in (f"token={token}" if token else "", query) if p)
    url = f"{server.ws_url}/items/{room}/ws" + (f"?{params}" if params else "")
    return ChatClient(await websockets.connect(url, **kwargs))


async def join(server: LiveServer, room: str, token: str, query: str = "") -> ChatClient:
    client = await connect(server, room, token, query)
    await client.join()
    return client


HOOK_SECRET = "the host's webhook secret"


class Receiver:
    """The host: records every POST (body, signature header, the answer it gave)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answer: Callable[[dict[str, Any]], int] = lambda event: 200
        self.requests: list[tuple[bytes, str, int]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["content-length"]))
                status = receiver.answer(json.loads(body))
                with receiver._lock:
                    receiver.requests.append(
                        (body, self.headers.get("X-Chatroom-Signature", ""), status)
                    )
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def events(self, accepted_only: bool = False) -> list[dict[str, Any]]:
        with self._lock:
            requests = list(self.requests)
        return [json.loads(b) for b, _, status in requests if status == 200 or not accepted_only]

    def accepted_messages(self, room: str) -> list[int]:
        """The ids of the room's rows (messages, edits, deletes: an edit's or delete's is its
        seq) the host accepted, first arrivals only, in arrival order."""
        seen: dict[int, int] = {}
        for event in self.events(accepted_only=True):
            if event["room"] == room:
                seen.setdefault(event["id"], event["message"].get("seq", event["message"]["id"]))
        return list(seen.values())


def assert_sent_in_room_order(receiver: Receiver, rooms: list[str]) -> None:
    """No event was ever sent before every earlier event of its room had been accepted."""
    accepted: set[int] = set()
    sent_ids: dict[str, list[int]] = {room: [] for room in rooms}
    for body, signature, status in list(receiver.requests):
        expected = hmac.new(HOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert signature == f"sha256={expected}"
        event = json.loads(body)
        kind = {"message.created": "message", "message.updated": "edit"}
        assert event["message"]["type"] == kind.get(event["type"], "delete"), event
        assert event["room"] == event["message"]["room"]
        earlier = [e for e in sent_ids[event["room"]] if e < event["id"]]
        assert set(earlier) <= accepted, f"event {event['id']} sent before {earlier}"
        sent_ids[event["room"]].append(event["id"])
        if status == 200:
            accepted.add(event["id"])
