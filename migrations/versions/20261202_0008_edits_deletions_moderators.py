"""edits and deletions as rows of messages (kind, target_id), their state on the target
(edited_at, deleted_by), and the moderators granted by the CLI

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.core.models import UTCDateTime

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite batch mode rebuilds the table: it must keep AUTOINCREMENT (ids never reused).
MESSAGES_TABLE_KWARGS = {"sqlite_autoincrement": True}


def upgrade() -> None:
    with op.batch_alter_table("messages", table_kwargs=MESSAGES_TABLE_KWARGS) as batch:
        batch.add_column(
            sa.Column("kind", sa.String(length=8), server_default="message", nullable=False)
        )
        batch.add_column(sa.Column("target_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("edited_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("deleted_by", sa.String(length=32), nullable=True))
    op.create_table(
        "moderators",
        sa.Column("username", sa.String(length=32), nullable=False),
        sa.Column("room", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("username", "room", name=op.f("pk_moderators")),
    )


def downgrade() -> None:
    op.drop_table("moderators")
    with op.batch_alter_table("messages", table_kwargs=MESSAGES_TABLE_KWARGS) as batch:
        batch.drop_column("deleted_by")
        batch.drop_column("edited_at")
        batch.drop_column("target_id")
        batch.drop_column("kind")
