"""messages._sentinel: a batch insert returns its ids in order

SQLAlchemy's insert sentinel: with it, the writer's one INSERT ... RETURNING for a whole
batch is sorted back into the batch's order; without it SQLAlchemy (on SQLite, which does
not promise RETURNING's order) inserts a batch one row at a time.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MESSAGES_TABLE_KWARGS = {"sqlite_autoincrement": True}


def upgrade() -> None:
    with op.batch_alter_table("messages", table_kwargs=MESSAGES_TABLE_KWARGS) as batch:
        batch.add_column(sa.Column("_sentinel", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages", table_kwargs=MESSAGES_TABLE_KWARGS) as batch:
        batch.drop_column("_sentinel")
