"""A worker killed outright, and Redis lost for a moment under traffic."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.helpers import ChatClient
from tests.scaleout.conftest import (
    PRESENCE_TTL,
    Cluster,
    RedisServer,
    Worker,
    acknowledged,
    assert_same_messages,
    messages_within,
    new_room,
)

pytestmark = pytest.mark.redis


async def test_users_of_a_killed_worker_leave_presence(cluster: Cluster) -> None:
    a, b = cluster.start(2)
    tokens = await cluster.register("alice", "bob", "carol", "dave")
    room = new_room()
    alice, _, _ = await cluster.join(a, room, tokens["alice"])
    await cluster.join(b, room, tokens["carol"])  # carol is only on b
    await cluster.join(a, room, tokens["bob"])  # bob is on both
    await cluster.join(b, room, tokens["bob"])
    _, welcome, _ = await cluster.join(a, room, tokens["dave"])
    assert welcome["online"] == ["alice", "bob", "carol", "dave"]

    b.kill()  # SIGKILL: b says goodbye to no one
    frames: list[dict[str, Any]] = []
    deadline = time.monotonic() + 3 * PRESENCE_TTL
    while {"type": "leave", "room": room, "user": "carol"} not in frames:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no leave of carol {3 * PRESENCE_TTL}s after b died: {frames}"
        with contextlib.suppress(TimeoutError):
            frames.append(await alice.recv(timeout=remaining))
    # bob's entry of b expired too, at the same moment as carol's: give a wrong leave a
    # chance to arrive before looking.
    with contextlib.suppress(TimeoutError):
        while True:
            frames.append(await alice.recv(timeout=1.5))
    leaves = [f["user"] for f in frames if f["type"] == "leave"]
    assert leaves == ["carol"], f"only carol left (bob is still on a): {frames}"

    _, welcome, _ = await cluster.join(a, room, tokens["alice"])
    assert welcome["online"] == ["alice", "bob", "dave"]
    assert a.alive and a.healthz() == 200


@pytest.mark.parametrize("shared_database_url", ["sqlite"], indirect=True)
async def test_messages_after_a_redis_restart_reach_everyone(
    cluster: Cluster, own_redis: RedisServer
) -> None:
    cluster.extra_logs.append(own_redis.log_path)
    a, b = cluster.start(2, broker_url=own_redis.url)
    tokens = await cluster.register("alice", "bob")
    room = new_room()
    alice, _, _ = await cluster.join(a, room, tokens["alice"])
    bob, _, _ = await cluster.join(b, room, tokens["bob"])
    await alice.send("before", client_msg_id="before")
    before = await acknowledged(alice, "before")
    assert await messages_within(bob, 1) == [before]

    own_redis.kill()
    await asyncio.sleep(1)
    await own_redis.restart()
    await own_redis.wait_for_subscribers(2)  # both workers listen again

    await alice.send("after", client_msg_id="after")
    await asyncio.sleep(0.2)
    await bob.send("and from b", client_msg_id="from-b")
    seen_on_a = await messages_within(alice, 2)
    seen_on_b = await messages_within(bob, 2, timeout=1)
    stored = await cluster.stored(room, tokens["alice"])
    assert [m["body"] for m in stored] == ["before", "after", "and from b"]
    assert_same_messages(seen_on_a, stored[1:], who="alice on a")
    assert_same_messages(seen_on_b, stored[1:], who="bob on b")
    for worker in (a, b):
        assert worker.alive and worker.healthz() == 200, f"{worker} is not serving"


class Follower:
    """A client reading a room in the background, as a browser tab would."""

    def __init__(self, cluster: Cluster, name: str, worker: Worker, room: str) -> None:
        self.cluster, self.name, self.worker, self.room = cluster, name, worker, room
        self.seen: list[dict[str, Any]] = []
        self.closed_by_server: int | None = None  # the close code, when the server hung up
        self.client: ChatClient | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, token: str, since: int | None = None) -> list[dict[str, Any]]:
        """Connect (resuming after since, if given); returns the replayed messages."""
        query = "" if since is None else f"since={since}"
        self.client, _, history = await self.cluster.join(self.worker, self.room, token, query)
        self.closed_by_server = None
        self.seen += history["messages"]
        self._task = asyncio.create_task(self._read(self.client))
        return list(history["messages"])

    async def _read(self, client: ChatClient) -> None:
        try:
            while True:
                frame = await client.recv(timeout=3600)
                if frame["type"] == "message":
                    self.seen.append(frame)
        except ConnectionClosed as exc:
            self.closed_by_server = exc.rcvd.code if exc.rcvd else 1006

    async def hang_up(self) -> None:
        """The client goes away (a network drop, as far as the room is concerned)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.client is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.client.close(), 5)

    @property
    def connected(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def last_id(self) -> int:
        return self.seen[-1]["id"] if self.seen else 0

    async def reached(self, message_id: int, timeout: float) -> bool:
        """Wait until this client has seen message_id; False if not in time or disconnected."""
        deadline = time.monotonic() + timeout
        while self.last_id < message_id:
            if time.monotonic() > deadline or not self.connected:
                return False
            await asyncio.sleep(0.05)
        return True

    async def acknowledged(self, client_msg_id: str, timeout: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for message in reversed(self.seen):
                if message.get("client_msg_id") == client_msg_id:
                    return message
            assert time.monotonic() < deadline, f"{self.name}: no ack of {client_msg_id}"
            await asyncio.sleep(0.05)


async def test_workers_outlive_a_redis_restart(cluster: Cluster, own_redis: RedisServer) -> None:
    cluster.extra_logs.append(own_redis.log_path)
    a, b = cluster.start(2, broker_url=own_redis.url)
    tokens = await cluster.register("alice", "bob", "carol", "dan", "erin", "frank")
    room = new_room()
    # alice on a and bob on b stay connected throughout; dan hangs up during the outage; carol
    # talks on a all along.
    alice, bob, carol, dan = (
        Follower(cluster, name, worker, room)
        for name, worker in (("alice", a), ("bob", b), ("carol", a), ("dan", b))
    )
    for follower in (alice, bob, carol, dan):
        await follower.start(tokens[follower.name])
    assert carol.client is not None
    await carol.client.send("before", client_msg_id="before")
    first = await carol.acknowledged("before")
    assert await bob.reached(first["id"], timeout=10), "no delivery from a to b to begin with"

    async def talk() -> None:
        """carol sends every 20 ms, not waiting for acks; if the server hangs up, she is back."""
        for n in itertools.count():
            if carol.connected and carol.client is not None:
                with contextlib.suppress(ConnectionClosed):
                    await carol.client.send(f"carol #{n}", client_msg_id=f"carol-{n}")
                await asyncio.sleep(0.02)
            else:
                await asyncio.sleep(0.2)
                with contextlib.suppress(OSError, InvalidStatus, ConnectionClosed, TimeoutError):
                    await carol.start(tokens["carol"])

    talker = asyncio.create_task(talk())
    try:
        await asyncio.sleep(0.5)
        await dan.hang_up()
        own_redis.kill()
        await asyncio.sleep(1.5)
        assert a.alive and b.alive, "a worker died with Redis"
        await own_redis.restart()  # on the same port: the workers' URL holds

        # Once messages sent on a reach b again, the outage is over.
        frank, _, _ = await cluster.join(a, room, tokens["frank"])
        erin = Follower(cluster, "erin", b, room)
        await erin.start(tokens["erin"])
        deadline = time.monotonic() + 20
        for n in itertools.count():
            await frank.send(f"probe #{n}", client_msg_id=f"probe-{n}")
            probe = await acknowledged(frank, f"probe-{n}")
            if await erin.reached(probe["id"], timeout=1):
                break
            assert time.monotonic() < deadline, "messages sent on a never reach b after the restart"
    finally:
        talker.cancel()
        await asyncio.gather(talker, return_exceptions=True)
    assert carol.client is not None
    await carol.client.send("carol is done", client_msg_id="carol-done")
    await carol.acknowledged("carol-done", timeout=30)  # and so are all her earlier ones
    for worker in (a, b):
        assert worker.alive and worker.healthz() == 200, f"{worker} is not serving"

    # dan missed what was said while he was away and asks for it with since, on the other
    # worker this time: he gets exactly what he missed, then live messages again.
    missed = [m for m in await cluster.stored(room, tokens["dan"]) if m["id"] > dan.last_id]
    dan.worker = a
    replayed = await dan.start(tokens["dan"], since=dan.last_id)
    assert_same_messages(replayed, missed, who="dan's replay")
    await frank.send("welcome back", client_msg_id="welcome-back")
    last = await acknowledged(frank, "welcome-back")
    stored = await cluster.stored(room, tokens["frank"])
    assert stored[-1]["id"] == last["id"]
    assert await dan.reached(last["id"], timeout=10), "dan gets no live messages after resuming"
    assert_same_messages(dan.seen, stored, who="dan")

    # Sockets open through the outage or opened just after it: either the server hung up on
    # them (and they resumed with since), or they saw everything, in order, once. A silent gap
    # would leave a client no way to know it missed anything.
    for follower in (alice, bob, erin):
        if follower.closed_by_server is not None:
            await follower.start(tokens[follower.name], since=follower.last_id)
        assert await follower.reached(last["id"], timeout=15), (
            f"{follower.name}'s socket, open through the outage, stopped receiving"
        )
    await asyncio.sleep(0.3)  # anything doubled would have arrived by now
    for follower in (alice, bob, erin):
        since = follower.seen[0]["id"] if follower is erin else 0
        assert_same_messages(
            follower.seen, [m for m in stored if m["id"] >= since], who=follower.name
        )
