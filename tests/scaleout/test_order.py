"""One order per room across workers, and resuming on another worker with ?since=."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.helpers import ChatClient
from tests.scaleout.conftest import (
    Cluster,
    assert_same_messages,
    ids,
    messages_within,
    new_room,
    read_messages,
)

pytestmark = pytest.mark.redis

WORKERS = 3
SENDERS_PER_WORKER = 2
LISTENERS_PER_WORKER = 3
PER_SENDER = 50
WINDOW = 4  # messages a sender has in flight: it sends the next as soon as an ack frees a slot
IDLE = 10.0  # seconds without a frame after which a client stops waiting for more


async def flood(client: ChatClient, user: str, count: int, total: int) -> list[dict[str, Any]]:
    """Send count messages as fast as acks allow; return the messages seen, up to total (or
    until nothing more arrives: a lost ack stalls the sender)."""
    slots = asyncio.Semaphore(WINDOW)
    seen: list[dict[str, Any]] = []

    async def send_all() -> None:
        for n in range(count):
            await slots.acquire()
            await client.send(f"{user} #{n}", client_msg_id=f"{user}-{n}")

    sending = asyncio.create_task(send_all())
    try:
        while len(seen) < total:
            got = await messages_within(client, 1, timeout=IDLE)
            if not got:
                break
            seen += got
            if got[0]["user"] == user:
                slots.release()
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
    return seen


async def test_concurrent_senders_on_different_workers_see_one_id_order(
    cluster: Cluster,
) -> None:
    workers = cluster.start(WORKERS)
    senders = [f"sender{w}{n}" for w in range(WORKERS) for n in range(SENDERS_PER_WORKER)]
    listeners = [f"listener{w}{n}" for w in range(WORKERS) for n in range(LISTENERS_PER_WORKER)]
    tokens = await cluster.register(*senders, *listeners)
    room = new_room()
    total = PER_SENDER * len(senders)

    listening = {
        name: (await cluster.join(workers[n % WORKERS], room, tokens[name]))[0]
        for n, name in enumerate(listeners)
    }
    sending = {
        name: (await cluster.join(workers[n % WORKERS], room, tokens[name]))[0]
        for n, name in enumerate(senders)
    }
    seen_by = dict(
        zip(
            [*sending, *listening],
            await asyncio.gather(
                *(flood(client, name, PER_SENDER, total) for name, client in sending.items()),
                *(
                    messages_within(client, total, timeout=90, idle=IDLE)
                    for client in listening.values()
                ),
            ),
            strict=True,
        )
    )

    stored = await cluster.stored(room, tokens[listeners[0]])
    stored_ids = ids(stored)
    assert stored_ids == sorted(set(stored_ids))
    for name, seen in seen_by.items():
        assert_same_messages(seen, stored, who=name)
    assert len(stored) == total
    for sender in senders:  # and each sender's messages in the order it sent them
        own = [m["body"] for m in stored if m["user"] == sender]
        assert own == [f"{sender} #{n}" for n in range(PER_SENDER)]


async def test_resume_on_another_worker_gets_exactly_what_was_missed(cluster: Cluster) -> None:
    a, b = cluster.start(2)
    tokens = await cluster.register("alice", "bob")
    room = new_room()
    bob, _, _ = await cluster.join(a, room, tokens["bob"])
    alice, _, _ = await cluster.join(a, room, tokens["alice"])

    sent = 0

    async def say(count: int, pause: float = 0.0) -> list[dict[str, Any]]:
        """bob sends count messages, each after the ack of the one before."""
        nonlocal sent
        acked = []
        for _ in range(count):
            await bob.send(f"bob #{sent}", client_msg_id=f"m{sent}")
            while True:
                (message,) = await read_messages(bob, 1)
                if message.get("client_msg_id") == f"m{sent}":
                    break
            acked.append(message)
            sent += 1
            await asyncio.sleep(pause)
        return acked

    before = await say(5)
    assert await read_messages(alice, 5) == before
    last_seen = before[-1]["id"]
    await alice.close()

    # bob keeps talking on a while alice comes back on b, mid-stream.
    missed = await say(5)
    talking = asyncio.create_task(say(15, pause=0.02))
    alice, _, history = await cluster.join(b, room, tokens["alice"], f"since={last_seen}")
    during = await talking
    replayed = history["messages"]
    assert not history["has_more"]
    assert ids(replayed)[: len(missed)] == ids(missed), "the replay lacks what was missed"
    live = await read_messages(alice, len(missed) + len(during) - len(replayed))
    after = await say(3)
    live += await read_messages(alice, len(after))

    stored = await cluster.stored(room, tokens["alice"], after=last_seen)
    assert_same_messages(replayed + live, stored, who="alice after resuming on b")
    assert ids(replayed + live) == ids(missed + during + after)
