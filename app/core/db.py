"""Async engine and session factory, with the SQLite settings a chat write load needs."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

SQLITE_BUSY_TIMEOUT_MS = 5000  # a writer waits this long for another process's lock
# Every statement its own transaction: the message writer stores a batch as one INSERT, and
# a round trip to the driver's thread (aiosqlite) for BEGIN and COMMIT would cost more than
# the insert.
AUTOCOMMIT = {"isolation_level": "AUTOCOMMIT"}


def create_engine(url: str) -> AsyncEngine:
    """Engine for url; SQLite gets WAL, a busy timeout and explicit transaction control."""
    sqlite = url.startswith("sqlite")
    engine = create_async_engine(
        url,
        pool_pre_ping=not sqlite,
        # A crowd joining at once reads users and history side by side (WAL allows it).
        pool_size=10,
        max_overflow=20,
    )
    if sqlite:
        configure_sqlite(engine.sync_engine)
    return engine


def configure_sqlite(engine: Engine) -> None:
    """WAL, synchronous=NORMAL, a busy timeout, foreign keys, and BEGIN emitted by us."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN is ours to emit (below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # SQLAlchemy's recipe for pysqlite: the driver's own implicit BEGIN comes too late
        # for SAVEPOINTs and reads. A single statement in AUTOCOMMIT is atomic by itself, and
        # it waits for another process's write lock (busy_timeout) instead of failing.
        if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            conn.exec_driver_sql("BEGIN")


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded attributes after commit, for short per-operation use."""
    return async_sessionmaker(engine, expire_on_commit=False)
