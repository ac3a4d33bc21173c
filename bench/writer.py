"""What storing one message costs the server, in CPU, one message per transaction.

The case a quiet room or a fan-out with few senders hits: every batch holds one message.
Measured in one process on a fresh migrated database, each way in turn, one after another:

- sqlite3-loop: the baseline of bench/sqlite_baseline.py (INSERT and commit per row);
- loop: chatroom's SqliteWriter.insert, as the server runs it (on the event loop);
- thread: the same transaction sent to the writer's thread and back (run_in_executor), as
  every batch was before it moved onto the loop, and as a batch still is when the write
  lock is held elsewhere;
- hop: run_in_executor of a function that does nothing: the thread hop alone.

Prints one JSON line per way: messages, CPU microseconds per message (process CPU: every
thread), and the ratio to the sqlite3 loop.

    python bench/writer.py --messages 3000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from servers import database_url
from sqlite_baseline import FILLER, insert_loop, prepare

from app.chat.batches import Pending
from app.chat.sqlite_writer import SqliteWriter


async def per_message(count: int, store: Callable[[int], Awaitable[object]]) -> float:
    """CPU microseconds per store(i), over count calls after one warm-up call."""
    await store(-1)
    cpu = time.process_time()
    for index in range(count):
        await store(index)
    return (time.process_time() - cpu) / count * 1e6


async def measure(database: Path, count: int) -> dict[str, float]:
    writer = SqliteWriter(database_url(database))
    loop = asyncio.get_running_loop()

    def batch(index: int) -> list[Pending]:
        body = f"~0:{index}:{time.monotonic():.6f}~ {FILLER}"[:64]
        return [Pending(f"room-{index % 50}", "author", body, None, loop.create_future())]

    async def on_loop(index: int) -> object:
        return await writer.insert(batch(index))

    async def in_thread(index: int) -> object:
        return await loop.run_in_executor(writer._thread, writer._insert_in_thread, batch(index))

    async def hop(_index: int) -> object:
        return await loop.run_in_executor(writer._thread, int)

    try:
        return {
            "loop": await per_message(count, on_loop),
            "thread": await per_message(count, in_thread),
            "hop": await per_message(count, hop),
        }
    finally:
        await writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chatroom-writer-") as scratch:
        database = Path(scratch) / "bench.db"
        prepare(database)
        baseline = insert_loop(database, seconds=3.0)
        baseline_us = baseline["cpu_s"] / baseline["rows"] * 1e6
        results = {"sqlite3-loop": baseline_us} | asyncio.run(measure(database, args.messages))
    for way, micros in results.items():
        line = {"way": way, "cpu_us_per_message": round(micros, 1)}
        line["vs_sqlite3_loop"] = round(micros / baseline_us, 2)
        print(json.dumps(line))


if __name__ == "__main__":
    main()
