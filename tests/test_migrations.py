"""Alembic: from empty to head matches the models, and back down to base."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from app.core.migrate import downgrade, upgrade
from app.core.models import Base
from tests.helpers import MIGRATED_TABLES


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows} - {"sqlite_sequence"}


def test_upgrade_from_empty_matches_models_and_downgrade_to_base(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade(url)
    assert tables(path) == MIGRATED_TABLES
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations disagree: {diff}"
    with sqlite3.connect(path) as db:
        (messages_sql,) = db.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'messages'"
        ).fetchone()
        (revocations_sql,) = db.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'revocations'"
        ).fetchone()
        (events_sql,) = db.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'webhook_events'"
        ).fetchone()
    # Without AUTOINCREMENT SQLite may reuse the id of a deleted newest message, and a client
    # resuming with ?since= would never see the new one; a server polling revocations by id
    # would miss one the same way.
    assert "AUTOINCREMENT" in messages_sql
    assert "AUTOINCREMENT" in revocations_sql
    # Delivered events are deleted; a reused event id would be dropped by hosts as a repeat.
    assert "AUTOINCREMENT" in events_sql
    downgrade(url, "base")
    assert tables(path) == {"alembic_version"}
    upgrade(url)  # and up again, as a redeploy after a rollback would
    assert {"users", "messages"} <= tables(path)


def test_server_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    import asyncio

    import pytest

    from app.core.db import create_engine as create_async
    from app.core.migrate import NotMigrated, ensure_at_head

    async def check() -> None:
        engine = create_async(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
        try:
            await ensure_at_head(engine)
        finally:
            await engine.dispose()

    with pytest.raises(NotMigrated, match="chatroom migrate"):
        asyncio.run(check())
