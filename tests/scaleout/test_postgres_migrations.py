"""The same Alembic revisions on PostgreSQL: up to head, down to base, up again."""

from __future__ import annotations

import asyncio

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from app.core.db import create_engine
from app.core.migrate import NotMigrated, downgrade, ensure_at_head, upgrade
from app.core.models import Base
from tests.helpers import MIGRATED_TABLES

pytestmark = pytest.mark.postgres


def schema(url: str) -> tuple[set[str], list[object]]:
    """The tables of the database, and how it differs from the models."""

    def inspect_sync(connection: Connection) -> tuple[set[str], list[object]]:
        tables = set(inspect(connection).get_table_names())
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        return tables, list(diff)

    async def run() -> tuple[set[str], list[object]]:
        engine = create_engine(url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(inspect_sync)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def at_head(url: str) -> bool:
    async def run() -> bool:
        engine = create_engine(url)
        try:
            await ensure_at_head(engine)
        except NotMigrated:
            return False
        finally:
            await engine.dispose()
        return True

    return asyncio.run(run())


def test_upgrade_downgrade_upgrade_matches_models(postgres_url: str) -> None:
    assert not at_head(postgres_url), "an empty database passed for migrated"
    upgrade(postgres_url)
    tables, diff = schema(postgres_url)
    assert tables == MIGRATED_TABLES
    assert diff == [], f"models and migrations disagree on PostgreSQL: {diff}"
    assert at_head(postgres_url)

    downgrade(postgres_url, "base")
    tables, _ = schema(postgres_url)
    assert tables == {"alembic_version"}
    assert not at_head(postgres_url)

    upgrade(postgres_url)  # and up again, as a redeploy after a rollback would
    tables, diff = schema(postgres_url)
    assert tables == MIGRATED_TABLES
    assert diff == [], f"models and migrations disagree after a downgrade: {diff}"
    assert at_head(postgres_url)
