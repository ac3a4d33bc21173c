"""The SQLite message writer against a real migrated file: what happens when the write lock
is held elsewhere, and that the WAL does not grow without bound when the loop writes."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from app.chat import sqlite_writer
from app.chat.batches import Pending
from app.chat.sqlite_writer import SqliteWriter


@pytest.fixture
def database(database_url: str) -> Iterator[Path]:
    path = Path(make_url(database_url).database or "")
    with sqlite3.connect(path) as connection:
        connection.execute(
            "INSERT INTO users (username, password_hash, created_at)"
            " VALUES ('ann', 'x', '2026-01-01 00:00:00')"
        )
    yield path


@pytest.fixture
async def writer(database_url: str, database: Path) -> AsyncIterator[SqliteWriter]:
    writer = SqliteWriter(database_url)
    yield writer
    await writer.close()


def pending(body: str, client_msg_id: str | None = None) -> Pending:
    future = asyncio.get_running_loop().create_future()
    return Pending("r", "ann", body, client_msg_id, future)


def stored_bodies(database: Path) -> list[str]:
    with sqlite3.connect(database) as connection:
        return [body for (body,) in connection.execute("SELECT body FROM messages ORDER BY id")]


async def test_a_held_write_lock_is_waited_for_off_the_event_loop(
    writer: SqliteWriter, database: Path
) -> None:
    await writer.insert([pending("first")])  # the loop's own connection is open now
    other = sqlite3.connect(database, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process, or an account being written
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    insert = asyncio.create_task(writer.insert([pending("second", "c2")]))
    await asyncio.sleep(0.3)
    assert not insert.done()  # waiting for the lock...
    assert ticks >= 10  # ...while the loop carries on serving everyone else
    other.execute("COMMIT")
    other.close()
    [result] = await asyncio.wait_for(insert, 5)
    ticker.cancel()
    assert (result.message.body, result.message.client_msg_id) == ("second", "c2")
    assert stored_bodies(database) == ["first", "second"]
    # Once the lock is free again, the loop writes as before; a resend still resolves.
    [again] = await writer.insert([pending("second, resent", "c2")])
    assert again.duplicate and again.message == result.message
    assert stored_bodies(database) == ["first", "second"]


async def test_a_failed_batch_is_rolled_back_and_the_next_one_is_stored(
    writer: SqliteWriter, database: Path
) -> None:
    stranger = pending("from nobody")
    stranger.author = "nobody"  # no such user: the foreign key refuses the row
    with pytest.raises(sqlite3.IntegrityError):
        await writer.insert([pending("in the same batch"), stranger])
    [result] = await writer.insert([pending("after")])
    assert result.message.body == "after"
    assert stored_bodies(database) == ["after"]


async def test_the_wal_is_checkpointed_while_the_loop_writes(
    writer: SqliteWriter, database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_writer, "CHECKPOINT_EVERY", 20)
    wal = database.with_name(database.name + "-wal")
    for index in range(19):
        await writer.insert([pending(f"m{index}")])
    before_first_checkpoint = wal.stat().st_size
    for index in range(19, 200):
        await writer.insert([pending(f"m{index}")])
        await asyncio.sleep(0)  # let a checkpoint in the thread finish now and then
    # Ten times the writes, but the log restarts after each checkpoint instead of growing.
    assert wal.stat().st_size < 3 * before_first_checkpoint
    assert len(stored_bodies(database)) == 200
