"""Edits and deletions across workers: made on one, seen on the other, and in the other's
replay (its cache of the room is not stale)."""

from __future__ import annotations

import json

import pytest

from tests.scaleout.conftest import Cluster, new_room, read_messages
from tests.test_edits import moderator_token

pytestmark = pytest.mark.redis


async def test_an_edit_on_one_worker_and_a_delete_on_the_other_reach_both(
    cluster: Cluster,
) -> None:
    a, b = cluster.start(2)
    tokens = await cluster.register("alice", "bob", "mod")
    room = new_room()
    alice, _, _ = await cluster.join(a, room, tokens["alice"])
    bob, _, _ = await cluster.join(b, room, tokens["bob"])
    await alice.send("helo")
    await alice.send("spam")
    typo, spam = await read_messages(alice, 2)
    await read_messages(bob, 2)
    await cluster.join(b, room, tokens["bob"])  # worker b now holds the room's replay

    await alice.ws.send(json.dumps({"type": "edit", "id": typo["id"], "body": "hello"}))
    for client in (alice, bob):
        edit = await client.recv_type("edit")
        assert (edit["id"], edit["body"]) == (typo["id"], "hello")
    mod, _, _ = await cluster.join(b, room, moderator_token("mod", [room]))
    await mod.ws.send(json.dumps({"type": "delete", "id": spam["id"]}))
    for client in (alice, bob):
        deleted = await client.recv_type("delete")
        assert (deleted["id"], deleted["by"]) == (spam["id"], "mod")

    for worker in (a, b):
        _, _, history = await cluster.join(worker, room, tokens["bob"])
        assert [(m["body"], m.get("deleted_by")) for m in history["messages"]] == [
            ("hello", None),
            ("", "mod"),
        ]
