"""Typing notices and read markers between two workers: they travel through Redis like
messages, to the right sockets on every worker, and read markers take both databases'
upsert."""

from __future__ import annotations

import json

import pytest

from tests.scaleout.conftest import Cluster, new_room
from tests.test_typing_reads import of_type, until_message

pytestmark = pytest.mark.redis


async def test_typing_and_read_markers_reach_the_right_sockets_on_every_worker(
    cluster: Cluster,
) -> None:
    a, b = cluster.start(2)
    tokens = await cluster.register("alice", "bob")
    room = new_room()
    alice, _, _ = await cluster.join(a, room, tokens["alice"])
    bob, _, _ = await cluster.join(b, room, tokens["bob"])
    bob_tab, _, _ = await cluster.join(a, room, tokens["bob"])

    await bob.ws.send(json.dumps({"type": "typing"}))
    await bob.ws.send(json.dumps({"type": "typing"}))  # within the interval: dropped
    await bob.send("typed")
    seen = of_type(await until_message(alice, "typed"), "typing")
    assert seen == [{"type": "typing", "room": room, "user": "bob"}]
    assert of_type(await until_message(bob_tab, "typed"), "typing") == []

    await alice.send("read me")
    message_id = (await alice.recv_type("message"))["id"]
    await bob.ws.send(json.dumps({"type": "read", "id": message_id}))
    read = {"type": "read", "room": room, "id": message_id}
    assert await bob_tab.recv_type("read") == read  # bob's socket on the other worker
    await bob.ws.send(json.dumps({"type": "read", "id": message_id - 1}))  # back: nothing
    await bob.send("after reading")
    frames = await until_message(bob, "after reading")
    assert of_type(frames, "read") == [read] and of_type(frames, "error") == []
    assert of_type(await until_message(alice, "after reading"), "read") == []
