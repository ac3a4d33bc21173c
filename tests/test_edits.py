"""Edit and delete over real sockets: by the author, refused for others, by moderators (token
claim or CLI grant), and a resume with ?since= that gets each change exactly once, in order."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from jose import jwt

from app.core.config import Settings
from tests.helpers import SECRET, ChatClient, LiveServer, connect, join, register
from tests.test_cli import run


async def said(client: ChatClient, body: str) -> int:
    await client.send(body)
    message_id: int = (await client.recv_type("message"))["id"]
    return message_id


async def change(client: ChatClient, kind: str, message_id: Any, **extra: Any) -> None:
    await client.ws.send(json.dumps({"type": kind, "id": message_id, **extra}))


def moderator_token(name: str, claim: object) -> str:
    now = time.time()
    claims = {"sub": name, "iat": now, "exp": now + 600, "moderator": claim}
    token: str = jwt.encode(claims, SECRET, algorithm="HS256")
    return token


async def history(http: httpx.AsyncClient, token: str, room: str = "r1") -> list[dict[str, Any]]:
    response = await http.get(
        f"/items/{room}/messages", headers={"authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


async def two_in_r1(server: LiveServer, http: httpx.AsyncClient) -> list[tuple[str, ChatClient]]:
    """alice and bob, registered and joined to r1: (token, client) each."""
    pair = []
    for name in ("alice", "bob"):
        token = await register(http, name)
        pair.append((token, await join(server, "r1", token)))
    return pair


async def test_author_edits_and_deletes_everyone_sees_it_and_history_shows_the_state(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    (alice_token, alice), (bob_token, bob) = await two_in_r1(server, http)
    typo, secret = await said(alice, "helo"), await said(alice, "my password is hunter2")

    await change(alice, "edit", typo, body="  hello  ")
    for client in (alice, bob):
        edit = await client.recv_type("edit")
        assert edit["id"] == typo and edit["room"] == "r1" and edit["user"] == "alice"
        assert edit["body"] == "hello" and edit["edited_at"].endswith("Z")
    await change(alice, "delete", secret)
    for client in (alice, bob):
        deleted = await client.recv_type("delete")
        assert (deleted["id"], deleted["room"], deleted["by"]) == (secret, "r1", "alice")
        assert deleted["seq"] > edit["seq"] > secret  # its place in the room's sequence

    _, replay = await (await connect(server, "r1", bob_token)).join()
    for messages in (replay["messages"], await history(http, bob_token)):
        edited, deleted = (m for m in messages if m["id"] in (typo, secret))
        assert edited["body"] == "hello" and edited["edited_at"]
        assert deleted["body"] == "" and deleted["deleted_by"] == "alice"
        assert "hunter2" not in json.dumps(messages)


async def test_others_unknown_ids_and_other_rooms_are_refused_and_nothing_changes(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    (alice_token, alice), (bob_token, bob) = await two_in_r1(server, http)
    mine = await said(alice, "alice's words")
    elsewhere = await said(await join(server, "r2", alice_token), "another room")
    await bob.recv_type("message")

    refusals = [
        ("edit", mine, {"body": "bob's words"}, "not_author"),
        ("delete", mine, {}, "not_moderator"),
        ("edit", 10**9, {"body": "x"}, "unknown_message"),
        ("delete", elsewhere, {}, "unknown_message"),
        ("edit", mine, {"body": "   "}, "empty_body"),
        ("delete", "1", {}, "invalid_id"),
    ]
    for kind, target, extra, code in refusals:
        sender = alice if code == "empty_body" else bob
        await change(sender, kind, target, **extra)
        error = await sender.recv_type("error")
        assert error["code"] == code, (kind, target, error)
    assert await said(bob, "still connected") > mine  # the socket stayed open
    messages = await history(http, alice_token)
    assert [m["body"] for m in messages] == ["alice's words", "still connected"]
    assert all("edited_at" not in m and "deleted_by" not in m for m in messages)
    assert [m["body"] for m in await history(http, alice_token, "r2")] == ["another room"]


async def test_a_moderator_by_token_claim_deletes_anyones_message(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    alice_token = await register(http, "alice")
    await register(http, "mod")
    alice = await join(server, "r1", alice_token)
    message_id = await said(alice, "spam")
    outsider = await join(server, "r1", moderator_token("mod", ["r2"]))
    await change(outsider, "delete", message_id)
    assert (await outsider.recv_type("error"))["code"] == "not_moderator"

    mod = await connect(server, "r1", moderator_token("mod", "*"))
    welcome, _ = await mod.join()
    assert welcome["moderator"] is True
    await change(mod, "delete", message_id)
    deleted = await alice.recv_type("delete")
    assert (deleted["id"], deleted["by"]) == (message_id, "mod")
    assert (await history(http, alice_token))[0]["body"] == ""


async def test_a_moderator_granted_by_the_cli_deletes_until_revoked(
    settings: Settings, server: LiveServer, http: httpx.AsyncClient
) -> None:
    alice_token, mod_token = await register(http, "alice"), await register(http, "mod")
    alice = await join(server, "r1", alice_token)
    first, second = await said(alice, "one"), await said(alice, "two")
    env = {"CHATROOM_DATABASE_URL": settings.database_url, "PATH": "/usr/bin:/bin"}

    granted = run(env, "moderator", "mod", "--room", "r1")
    assert granted.returncode == 0, granted.stderr
    mod = await connect(server, "r1", mod_token)
    welcome, _ = await mod.join()
    assert welcome["moderator"] is True
    await change(mod, "delete", first)
    assert (await alice.recv_type("delete"))["id"] == first

    assert run(env, "moderator", "mod", "--room", "r1", "--revoke").returncode == 0
    await change(mod, "delete", second)
    assert (await mod.recv_type("error"))["code"] == "not_moderator"
    assert [m["body"] for m in await history(http, alice_token)] == ["", "two"]


async def test_resume_gets_missed_messages_then_each_edit_and_delete_once_in_order(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    (alice_token, alice), (bob_token, bob) = await two_in_r1(server, http)
    seen = await said(alice, "seen by bob")
    assert (await bob.recv_type("message"))["id"] == seen
    await bob.close()

    missed = await said(alice, "missed by bob")
    await change(alice, "edit", seen, body="seen, then edited")
    await alice.recv_type("edit")
    await change(alice, "edit", missed, body="missed, then edited")
    await alice.recv_type("edit")
    await change(alice, "delete", seen)
    await alice.recv_type("delete")

    bob = await connect(server, "r1", bob_token, query=f"since={seen}")
    _, replay = await bob.join()
    frames = [(f["type"], f["id"], f.get("body")) for f in replay["messages"]]
    assert frames == [
        ("message", missed, "missed, then edited"),
        ("edit", seen, "seen, then edited"),
        ("edit", missed, "missed, then edited"),
        ("delete", seen, None),
    ]
    seqs = [f.get("seq", f["id"]) for f in replay["messages"]]
    assert seqs == sorted(seqs)
    # Resuming from the last of them gives nothing again.
    again = await connect(server, "r1", bob_token, query=f"since={seqs[-1]}")
    _, replay = await again.join()
    assert replay["messages"] == []


async def test_rest_history_after_an_id_with_changes_continues_a_resume(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    (alice_token, alice), _ = await two_in_r1(server, http)
    old = await said(alice, "said before the reader left")
    left_at = await said(alice, "the last the reader saw")
    later = await said(alice, "said after")
    await change(alice, "edit", old, body="an old message, edited later")
    edit = await alice.recv_type("edit")
    await change(alice, "delete", later)
    delete = await alice.recv_type("delete")
    auth = {"authorization": f"Bearer {alice_token}"}

    page = await http.get("/items/r1/messages?changes=true&limit=2", params={"after": left_at})
    assert page.status_code == 401  # the bearer token is still needed
    page = await http.get(
        "/items/r1/messages", params={"after": left_at, "changes": "true", "limit": 2}, headers=auth
    )
    first = page.json()
    assert [(m.get("type"), m["id"]) for m in first["messages"]] == [
        (None, later),
        ("edit", old),
    ]
    assert first["messages"][1] == edit  # as the socket gave it
    assert first["has_more"] is True
    after = first["messages"][-1]["seq"]
    rest = (
        await http.get(
            "/items/r1/messages", params={"after": after, "changes": "true"}, headers=auth
        )
    ).json()
    assert rest["messages"] == [delete] and rest["has_more"] is False
    # Without changes: the messages alone, in their current state.
    plain = await http.get("/items/r1/messages", params={"after": left_at}, headers=auth)
    assert [(m["id"], m["body"]) for m in plain.json()["messages"]] == [(later, "")]
    without_after = await http.get("/items/r1/messages?changes=true", headers=auth)
    assert without_after.status_code == 422
