"""Running Alembic from code: the CLI's start-up migration and the start-up head check."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import resource, sqlite_file


class NotMigrated(RuntimeError):
    """The database does not exist, or its schema is not at the newest Alembic revision."""


def alembic_config(database_url: str) -> Config:
    config = Config(str(resource("alembic.ini")))
    config.set_main_option("script_location", str(resource("migrations")))
    # env.py prefers this over the settings, so tests and the CLI can name a database.
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate the database to revision (synchronous: call it before the event loop runs)."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


async def ensure_at_head(engine: AsyncEngine) -> None:
    """Refuse a database that `chatroom migrate` has not brought up to date.

    A SQLite file that is not there is not opened: SQLite would create it, empty.
    """
    database = sqlite_file(engine.url.render_as_string(hide_password=False))
    where = engine.url.render_as_string(hide_password=True)
    if database is not None:
        where = engine.url.set(database=str(database)).render_as_string(hide_password=True)
        if not database.exists():
            raise NotMigrated(
                f"no chatroom database at {where} (not migrated): "
                "run `chatroom migrate` or set CHATROOM_DATABASE_URL"
            )
    script = ScriptDirectory.from_config(alembic_config(str(engine.url)))

    def current(connection: Connection) -> set[str]:
        return set(MigrationContext.configure(connection).get_current_heads())

    async with engine.connect() as connection:
        heads = await connection.run_sync(current)
    if heads != set(script.get_heads()):
        raise NotMigrated(
            f"the chatroom database at {where} is at revision {sorted(heads) or 'none'}, not "
            f"at {sorted(script.get_heads())}: run `chatroom migrate` or set CHATROOM_DATABASE_URL"
        )
