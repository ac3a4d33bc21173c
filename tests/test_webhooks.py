"""Webhooks: every stored message reaches the host, signed, in room order, whatever the host
and the server go through meanwhile. The host is a real HTTP server on a free port."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from app.core.config import Settings
from tests.helpers import (
    HOOK_SECRET,
    SECRET,
    LiveServer,
    Receiver,
    assert_sent_in_room_order,
    free_port,
    join,
    register,
)
from tests.test_edits import change, said

WAIT_SECONDS = 30.0


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    host = Receiver(free_port())
    yield host
    host.stop()


@pytest.fixture
def hook_settings(database_url: str, receiver: Receiver) -> Settings:
    return Settings(
        database_url=database_url,
        secret_key=SECRET,
        webhook_url=f"http://127.0.0.1:{receiver.port}/hooks/chat",
        webhook_secret=HOOK_SECRET,
        webhook_retry_max_seconds=0.2,  # retries follow each other fast in a test
    )


def stored_ids(database_url: str, room: str) -> list[int]:
    with sqlite3.connect(make_url(database_url).database or "") as db:
        rows = db.execute("SELECT id FROM messages WHERE room = ? ORDER BY id", (room,))
        return [id_ for (id_,) in rows]


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"waited {WAIT_SECONDS} s for {what}"
        await asyncio.sleep(0.05)


async def post_messages(server: LiveServer, token: str, room: str, *bodies: str) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        for body in bodies:
            response = await http.post(
                f"/items/{room}/messages",
                json={"body": body},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert response.status_code == 201, response.text


def chatroom_webhooks(database_url: str) -> str:
    """What `chatroom webhooks` prints for this database."""
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "webhooks"],
        env={**os.environ, "CHATROOM_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


async def test_every_message_reaches_a_host_that_refuses_then_fails_then_accepts(
    hook_settings: Settings, database_url: str, receiver: Receiver
) -> None:
    rooms = ["ticket-1", "ticket-2"]
    # 1. Nothing listens at the webhook URL: connections are refused.
    server = LiveServer(hook_settings).start()
    async with httpx.AsyncClient(base_url=server.url) as http:
        token = await register(http, "alice")
    for room in rooms:
        await post_messages(server, token, room, f"{room} one", f"{room} two", f"{room} three")

    def refused_twice() -> bool:
        with sqlite3.connect(make_url(database_url).database or "") as db:
            rows = db.execute("SELECT count(*) FROM webhook_events WHERE attempts >= 2")
            return bool(rows.fetchone()[0] == len(rooms))

    await wait_for(refused_twice, "two refused attempts in each room")
    server.stop()
    shown = chatroom_webhooks(database_url)
    assert "backlog: 6 event(s)" in shown, shown
    assert "ConnectError" in shown, shown

    # 2. The host is up but answers 500; the server restarted meanwhile.
    receiver.answer = lambda event: 500
    receiver.start()
    server = LiveServer(hook_settings).start()
    for room in rooms:
        await post_messages(server, token, room, f"{room} four")
    await wait_for(lambda: len(receiver.events()) >= 4, "the failing host to be tried")
    server.stop()

    # 3. The host accepts; the server restarted once more, and talked to meanwhile.
    receiver.answer = lambda event: 200
    server = LiveServer(hook_settings).start()
    for room in rooms:
        await post_messages(server, token, room, f"{room} five")
    await wait_for(
        lambda: all(
            receiver.accepted_messages(room) == stored_ids(database_url, room) for room in rooms
        ),
        "every message at the host",
    )
    server.stop()

    for room in rooms:
        bodies = {e["message"]["id"]: e["message"]["body"] for e in receiver.events(True)}
        assert [bodies[id_] for id_ in receiver.accepted_messages(room)] == [
            f"{room} {n}" for n in ("one", "two", "three", "four", "five")
        ]
    assert_sent_in_room_order(receiver, rooms)
    assert "backlog: 0 event(s)" in chatroom_webhooks(database_url)


async def test_a_room_the_host_refuses_does_not_hold_back_the_others(
    hook_settings: Settings, database_url: str, receiver: Receiver
) -> None:
    receiver.answer = lambda event: 500 if event["room"] == "stuck" else 200
    receiver.start()
    server = LiveServer(hook_settings).start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            token = await register(http, "alice")
        await post_messages(server, token, "stuck", "first", "second")
        await post_messages(server, token, "free", "a", "b", "c")
        await wait_for(
            lambda: receiver.accepted_messages("free") == stored_ids(database_url, "free"),
            "the other room's messages",
        )
        await wait_for(
            lambda: sum(e["room"] == "stuck" for e in receiver.events()) >= 3,
            "the refused room to be retried",
        )
        # Only the refused room's first event was tried; its second waits behind it.
        first = stored_ids(database_url, "stuck")[0]
        assert {e["message"]["id"] for e in receiver.events() if e["room"] == "stuck"} == {first}
        receiver.answer = lambda event: 200
        await wait_for(
            lambda: receiver.accepted_messages("stuck") == stored_ids(database_url, "stuck"),
            "the refused room once the host takes it",
        )
    finally:
        server.stop()
    assert_sent_in_room_order(receiver, ["stuck", "free"])


def test_a_webhook_url_that_does_not_parse_stops_the_server_at_start(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CHATROOM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}",
        "CHATROOM_WEBHOOK_URL": "hooks.example.com/chat",
        "CHATROOM_WEBHOOK_SECRET": HOOK_SECRET,
    }
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "CHATROOM_WEBHOOK_URL" in done.stderr


async def test_without_a_webhook_url_nothing_is_queued(
    server: LiveServer, http: httpx.AsyncClient, database_url: str
) -> None:
    token = await register(http, "alice")
    await post_messages(server, token, "r1", "hello")
    shown = chatroom_webhooks(database_url)
    assert "webhooks: off" in shown and "backlog: 0 event(s)" in shown, shown


async def test_a_resend_is_one_event(
    hook_settings: Settings, database_url: str, receiver: Receiver
) -> None:
    receiver.start()
    server = LiveServer(hook_settings).start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            token = await register(http, "alice")
            headers = {"Authorization": f"Bearer {token}"}
            for status in (201, 200):
                response = await http.post(
                    "/items/r1/messages",
                    json={"body": "once", "client_msg_id": "c-1"},
                    headers=headers,
                )
                assert response.status_code == status, response.text
        await post_messages(server, token, "r1", "after")
        await wait_for(
            lambda: receiver.accepted_messages("r1") == stored_ids(database_url, "r1"),
            "both messages at the host",
        )
    finally:
        server.stop()
    assert [e["message"]["body"] for e in receiver.events()] == ["once", "after"]


async def test_edits_and_deletes_reach_the_host_in_order_behind_a_refused_edit(
    hook_settings: Settings, database_url: str, receiver: Receiver
) -> None:
    refusals = [500, 500]  # the edit's first two attempts fail; what follows waits for it
    receiver.answer = lambda e: (
        refusals.pop() if e["type"] == "message.updated" and refusals else 200
    )
    receiver.start()
    server = LiveServer(hook_settings).start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            token = await register(http, "alice")
        alice = await join(server, "r1", token)
        draft = await said(alice, "draft")
        await change(alice, "edit", draft, body="final")
        await alice.recv_type("edit")
        second = await said(alice, "second")
        await change(alice, "delete", second)
        await alice.recv_type("delete")
        await wait_for(
            lambda: receiver.accepted_messages("r1") == stored_ids(database_url, "r1"),
            "every message, edit and delete at the host",
        )
    finally:
        server.stop()
    accepted = receiver.events(accepted_only=True)
    assert [(e["type"], e["message"]["id"]) for e in accepted] == [
        ("message.created", draft),
        ("message.updated", draft),
        ("message.created", second),
        ("message.deleted", second),
    ]
    assert accepted[1]["message"]["body"] == "final"
    assert accepted[3]["message"]["by"] == "alice"
    assert sum(e["type"] == "message.updated" for e in receiver.events()) == 3  # 2 refused
    assert_sent_in_room_order(receiver, ["r1"])
