"""webhook_events: the webhook outbox

Filled by the message writer in the transaction that stores the messages, emptied by the
delivery task as the host accepts each event (app/chat/webhooks.py).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.core.models import UTCDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("room", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("retry_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("failed_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_webhook_events_room_id", "webhook_events", ["room", "id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_events_room_id", table_name="webhook_events")
    op.drop_table("webhook_events")
