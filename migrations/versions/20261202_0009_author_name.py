"""messages.author_name: the display name (a token's `name` claim) a message was sent under

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# SQLite batch mode rebuilds the table: it must keep AUTOINCREMENT (ids never reused).
MESSAGES_TABLE_KWARGS = {"sqlite_autoincrement": True}


def upgrade() -> None:
    # A plain ADD COLUMN on both databases: no rebuild of a large messages table.
    op.add_column("messages", sa.Column("author_name", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages", table_kwargs=MESSAGES_TABLE_KWARGS) as batch:
        batch.drop_column("author_name")
