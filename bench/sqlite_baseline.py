"""Baseline: a plain sqlite3 loop inserting and committing one message row at a time.

The table is chatroom's own (a fresh database migrated with `chatroom migrate`), with the
pragmas chatroom sets (WAL, synchronous=NORMAL, foreign keys on), so the loop pays what a
naive commit-per-message server would pay for storage alone: no sockets, no JSON.
Prints one JSON line: rows, seconds, rows/s, CPU seconds.

    python bench/sqlite_baseline.py --seconds 5
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

FILLER = "the quick brown fox jumps over the lazy dog " * 4


def prepare(database: Path) -> None:
    """Migrate a fresh database to chatroom's schema and add the author."""
    from servers import CHATROOM_BENCH_ENV, database_url, migrate, seed_users

    migrate(CHATROOM_BENCH_ENV | {"CHATROOM_DATABASE_URL": database_url(database)})
    seed_users(database, ["author"])


def insert_loop(
    database: Path, seconds: float, rooms: int = 50, body_chars: int = 64
) -> dict[str, float]:
    connection = sqlite3.connect(database)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA foreign_keys=ON")
    statement = "INSERT INTO messages (room, author, body, created_at) VALUES (?, ?, ?, ?)"
    rows = 0
    cpu = time.process_time()
    start = time.monotonic()
    deadline = start + seconds
    while True:
        now = datetime.now(UTC)
        body = f"~0:{rows}:{time.monotonic():.6f}~ {FILLER}"[:body_chars]
        created = now.strftime("%Y-%m-%d %H:%M:%S.%f")
        connection.execute(statement, (f"room-{rows % rooms}", "author", body, created))
        connection.commit()
        rows += 1
        if rows % 64 == 0 and time.monotonic() >= deadline:
            break
    elapsed = time.monotonic() - start
    cpu = time.process_time() - cpu
    (stored,) = connection.execute("SELECT count(*) FROM messages").fetchone()
    connection.close()
    assert stored == rows
    return {"rows": rows, "seconds": elapsed, "rows_per_s": rows / elapsed, "cpu_s": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--database", type=Path, help="an already prepared database")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chatroom-sqlite-") as scratch:
        database = args.database
        if database is None:
            database = Path(scratch) / "bench.db"
            prepare(database)
        json.dump(insert_loop(database, args.seconds), sys.stdout)
        print()


if __name__ == "__main__":
    main()
