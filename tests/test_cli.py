"""The `chatroom` command as a user runs it: migrate, create and delete users, mint a token,
serve."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from app.core.config import Settings
from app.core.security import load_secret_key
from tests.helpers import (
    PASSWORD,
    SECRET,
    LiveServer,
    connect,
    free_port,
    join,
    register,
    wait_for_health,
)

REPOSITORY = Path(__file__).resolve().parent.parent


def run(
    env: dict[str, str], *args: str, stdin: str = "", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        # This checkout's app, from whatever directory the command runs in.
        env={**env, "PYTHONPATH": os.pathsep.join([str(REPOSITORY), env.get("PYTHONPATH", "")])},
        cwd=cwd,
        timeout=60,
        check=False,
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CHATROOM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}",
        "CHATROOM_SECRET_KEY": "",
    }


def test_create_user_token_and_serve(env: dict[str, str], tmp_path: Path) -> None:
    assert run(env, "migrate").returncode == 0
    created = run(env, "create-user", "alice", "--password-stdin", stdin="password123\n")
    assert created.returncode == 0, created.stderr
    again = run(env, "create-user", "alice", "--password-stdin", stdin="password123\n")
    assert again.returncode == 1 and "taken" in again.stderr
    weak = run(env, "create-user", "bob", "--password-stdin", stdin="short\n")
    assert weak.returncode == 2
    minted = run(env, "token", "alice")
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    assert run(env, "token", "nobody").returncode == 1
    # The generated key sits beside the database and is reused, with a warning.
    assert (tmp_path / "chatroom.secret").exists()
    assert "CHATROOM_SECRET_KEY is not set" in minted.stderr

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_health(f"http://127.0.0.1:{port}")
        with ws_connect(f"ws://127.0.0.1:{port}/items/cli-room/ws?token={token}") as ws:
            assert '"type":"welcome"' in str(ws.recv(timeout=5))
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=20)
    assert token not in output, "the access token reached the log"
    assert "token=[redacted]" in output


def test_generated_key_is_kept_between_starts(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    first = load_secret_key(settings)
    assert load_secret_key(settings) == first
    assert len(first) >= 32
    assert (tmp_path / "chatroom.secret").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    "args",
    [
        ("token", "alice"),
        ("create-user", "alice", "--password-stdin"),
        ("set-password", "alice", "--password-stdin"),
        ("serve", "--no-migrate"),
    ],
)
def test_a_command_away_from_the_database_says_so_in_one_line_and_creates_nothing(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    """Run from another directory than the server's: the default ./chatroom.db is not there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATROOM_")}
    result = run(env, *args, stdin="password123\n", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"chatroom: no chatroom database at sqlite+aiosqlite:///{tmp_path / 'chatroom.db'} "
        "(not migrated): run `chatroom migrate` or set CHATROOM_DATABASE_URL"
    ]
    assert list(tmp_path.iterdir()) == [], "an empty database or key was left behind"


def test_a_database_not_at_head_is_named_in_one_line(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "cli.db").touch()  # what the commands used to leave behind
    result = run(env, "token", "alice")
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        f"chatroom: the chatroom database at sqlite+aiosqlite:///{tmp_path / 'cli.db'} is at "
        "revision none, not at ['"
    )
    assert line.endswith("']: run `chatroom migrate` or set CHATROOM_DATABASE_URL")


async def test_set_password_is_the_way_back_in(server: LiveServer) -> None:
    env = {
        **os.environ,
        "CHATROOM_DATABASE_URL": server.settings.database_url,
        "CHATROOM_SECRET_KEY": SECRET,
    }
    async with httpx.AsyncClient(base_url=server.url) as http:
        old_token = await register(http, "alice")
        assert (
            run(env, "set-password", "nobody", "--password-stdin", stdin="x" * 12).returncode == 1
        )
        short = run(env, "set-password", "alice", "--password-stdin", stdin="short\n")
        assert short.returncode == 2 and "password" in short.stderr
        changed = run(env, "set-password", "alice", "--password-stdin", stdin="a new password\n")
        assert changed.returncode == 0, changed.stderr
        refused = await http.post("/auth/token", data={"username": "alice", "password": PASSWORD})
        assert refused.status_code == 401
        # Tokens issued before the change are refused, as after POST /auth/password.
        old = await http.get("/rooms", headers={"Authorization": f"Bearer {old_token}"})
        assert old.status_code == 401
        fresh = await http.post(
            "/auth/token", data={"username": "alice", "password": "a new password"}
        )
        assert fresh.status_code == 200
        token = fresh.json()["access_token"]
        assert (
            await http.get("/rooms", headers={"Authorization": f"Bearer {token}"})
        ).status_code == 200


async def test_delete_user_closes_sockets_refuses_tokens_and_keeps_history(
    server: LiveServer, http: httpx.AsyncClient, settings: Settings
) -> None:
    alice = await register(http, "alice")
    bob = await register(http, "bob")
    socket = await join(server, "r1", alice)
    await socket.send("before I go")
    assert (await socket.recv_type("message"))["body"] == "before I go"
    env = {
        **os.environ,
        "CHATROOM_DATABASE_URL": settings.database_url,
        "CHATROOM_SECRET_KEY": SECRET,
    }
    # Another process than the server, as an operator runs it.
    deleted = await asyncio.to_thread(run, env, "delete-user", "alice")
    assert deleted.returncode == 0, deleted.stderr
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await socket.recv(timeout=10)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "account deleted")
    # Refused at once, though the server looked alice up moments ago (and caches accounts).
    with pytest.raises(InvalidStatus) as refused:
        await connect(server, "r1", alice)
    assert refused.value.response.status_code == 403
    assert (
        await http.get("/rooms", headers={"Authorization": f"Bearer {alice}"})
    ).status_code == 401
    login = await http.post("/auth/token", data={"username": "alice", "password": PASSWORD})
    assert login.status_code == 401
    # Her name stays taken: no one else can pose as the author of what she wrote.
    again = await http.post("/auth/register", json={"username": "alice", "password": PASSWORD})
    assert again.status_code == 409
    history = await http.get("/items/r1/messages", headers={"Authorization": f"Bearer {bob}"})
    assert [(m["user"], m["body"]) for m in history.json()["messages"]] == [
        ("alice", "before I go")
    ]
    twice = await asyncio.to_thread(run, env, "delete-user", "alice")
    assert twice.returncode == 1 and "no user" in twice.stderr
    assert run(env, "token", "alice").returncode == 1
