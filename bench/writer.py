"""What one stored message costs chatroom's writer, against a plain sqlite3 commit per row.

Submits messages one at a time (each waits for its commit, as one closed-loop sender's
would) and then in bursts of --burst, to a MessageWriter on a fresh migrated SQLite file, and
reports wall time and process CPU per message (both threads: the loop's and aiosqlite's),
and how many trips to aiosqlite's thread one batch takes.

    python bench/writer.py --messages 2000 --burst 64
    python bench/writer.py --webhooks    # each batch also fills the webhook outbox
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
import time
from pathlib import Path

import aiosqlite
import uvloop

from app.chat.broker import MemoryBroker
from app.chat.ordering import LocalOnly
from app.chat.store import MessageWriter
from app.core.db import create_engine
from app.core.migrate import upgrade


def _seed(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO users (username, password_hash, created_at)"
            " VALUES ('author', 'x', '2026-01-01 00:00:00')"
        )


async def _run(url: str, messages: int, burst: int, webhooks: bool) -> dict[str, float]:
    engine = create_engine(url)
    broker = MemoryBroker()
    await broker.start(lambda frames: None, _nothing)
    writer = MessageWriter(
        engine, broker, LocalOnly(), outbox=asyncio.Event() if webhooks else None
    )
    writer.start()
    trips = 0
    real = aiosqlite.Connection._execute

    async def counting(self: aiosqlite.Connection, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal trips
        trips += 1
        return await real(self, fn, *args, **kwargs)

    aiosqlite.Connection._execute = counting  # type: ignore[method-assign]
    results: dict[str, float] = {}
    try:
        for label, size in (("single", 1), ("burst", burst)):
            trips = 0
            wall, cpu = time.perf_counter(), time.process_time()
            for start in range(0, messages, size):
                futures = [
                    writer.submit(room=f"room-{i % 50}", author="author", body=f"message {i}")
                    for i in range(start, min(start + size, messages))
                ]
                await asyncio.gather(*futures)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            batches = -(-messages // size)
            results[f"{label}_wall_us_per_msg"] = round(wall / messages * 1e6, 1)
            results[f"{label}_cpu_us_per_msg"] = round(cpu / messages * 1e6, 1)
            results[f"{label}_trips_per_batch"] = round(trips / batches, 2)
    finally:
        aiosqlite.Connection._execute = real  # type: ignore[method-assign]
        await writer.stop()
        await engine.dispose()
    return results


async def _nothing() -> None:
    return None


def _sqlite3_loop(path: Path, messages: int) -> dict[str, float]:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(messages):
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO messages (room, author, body, created_at) VALUES (?, 'author', ?, ?)",
            (f"room-{i % 50}", f"message {i}", "2026-01-01 00:00:00"),
        )
        db.execute("COMMIT")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    db.close()
    return {
        "sqlite3_wall_us_per_msg": round(wall / messages * 1e6, 1),
        "sqlite3_cpu_us_per_msg": round(cpu / messages * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--burst", type=int, default=64)
    parser.add_argument("--webhooks", action="store_true", help="writer with the outbox")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chatroom-writer-") as scratch:
        path = Path(scratch) / "writer.db"
        url = f"sqlite+aiosqlite:///{path}"
        upgrade(url)
        _seed(path)
        # as uvicorn runs it
        result = uvloop.run(_run(url, args.messages, args.burst, args.webhooks))
        result |= _sqlite3_loop(path, args.messages)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
