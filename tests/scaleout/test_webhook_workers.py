"""Webhooks from several workers sharing one outbox: each event goes out from one of them,
once, and each room's events in order, while messages are posted on every worker."""

from __future__ import annotations

import asyncio
import itertools
import time

import httpx
import pytest

from tests.helpers import HOOK_SECRET, Receiver, assert_sent_in_room_order, free_port
from tests.scaleout.conftest import Cluster, ids, new_room

pytestmark = pytest.mark.redis

WORKERS = 3
ROOMS = 4
PER_WORKER_AND_ROOM = 10
REFUSED = 12  # the host's first answers are 500s, so workers retry and take over rooms


async def test_workers_deliver_each_event_once_in_room_order(cluster: Cluster) -> None:
    receiver = Receiver(free_port())
    answers = itertools.count()
    receiver.answer = lambda event: 500 if next(answers) < REFUSED else 200
    receiver.start()
    try:
        workers = cluster.start(
            WORKERS,
            CHATROOM_WEBHOOK_URL=f"http://127.0.0.1:{receiver.port}/hook",
            CHATROOM_WEBHOOK_SECRET=HOOK_SECRET,
            CHATROOM_WEBHOOK_RETRY_MAX_SECONDS="0.2",
        )
        token = (await cluster.register("backend"))["backend"]
        rooms = [new_room() for _ in range(ROOMS)]

        async def post_all(url: str, room: str) -> None:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                for n in range(PER_WORKER_AND_ROOM):
                    response = await http.post(
                        f"/items/{room}/messages",
                        json={"body": f"{url} #{n}"},
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    assert response.status_code == 201, response.text

        await asyncio.gather(*(post_all(w.url, room) for w in workers for room in rooms))
        stored = {room: ids(await cluster.stored(room, token)) for room in rooms}
        assert all(len(s) == WORKERS * PER_WORKER_AND_ROOM for s in stored.values())
        deadline = time.monotonic() + 60
        while any(receiver.accepted_messages(room) != stored[room] for room in rooms):
            assert time.monotonic() < deadline, "not every message reached the host"
            await asyncio.sleep(0.1)
    finally:
        receiver.stop()
    accepted = receiver.events(accepted_only=True)
    assert len(accepted) == len({e["id"] for e in accepted}), "an event was delivered twice"
    assert_sent_in_room_order(receiver, rooms)
