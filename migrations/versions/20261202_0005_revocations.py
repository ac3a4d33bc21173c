"""revocations: sign-outs, password changes and deleted accounts, for every process to poll

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-09
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.core.models import UTCDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "revocations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=32), nullable=False),
        sa.Column("jti", sa.String(length=64), nullable=True),
        sa.Column("issued_before", UTCDateTime(), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_revocations")),
        # Pollers read the rows after the last id they saw: SQLite must never reuse one.
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_revocations_expires_at"), "revocations", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_revocations_expires_at"), table_name="revocations")
    op.drop_table("revocations")
