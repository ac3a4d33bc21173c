"""client_msg_id for exactly-once sends; tokens_valid_after for revoking tokens

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.core.models import UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# SQLite rebuilds the table in batch mode; keep AUTOINCREMENT (see revision 0001).
MESSAGES_TABLE_KWARGS = {"sqlite_autoincrement": True}


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("tokens_valid_after", UTCDateTime(), nullable=True))
    with op.batch_alter_table("messages", table_kwargs=MESSAGES_TABLE_KWARGS) as batch:
        batch.add_column(sa.Column("client_msg_id", sa.String(length=64), nullable=True))
        batch.create_unique_constraint(op.f("uq_messages_author"), ["author", "client_msg_id"])


def downgrade() -> None:
    with op.batch_alter_table("messages", table_kwargs=MESSAGES_TABLE_KWARGS) as batch:
        batch.drop_constraint(op.f("uq_messages_author"), type_="unique")
        batch.drop_column("client_msg_id")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("tokens_valid_after")
