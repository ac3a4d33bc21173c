"""The `chatroom` command as a user runs it: migrate, create a user, mint a token, serve."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.sync.client import connect as ws_connect

from app.core.config import Settings
from app.core.security import load_secret_key
from tests.helpers import free_port, wait_for_health


def run(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
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
