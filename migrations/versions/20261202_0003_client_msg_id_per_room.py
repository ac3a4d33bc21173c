"""client_msg_id is unique per (author, room), not per author

A resend is recognised within the room it was sent to; the same id in another room is a new
message, never answered with the first room's.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite rebuilds the table in batch mode; keep AUTOINCREMENT (see revision 0001).
MESSAGES_TABLE_KWARGS = {"sqlite_autoincrement": True}
NEW = "uq_messages_author_room_client_msg_id"


def upgrade() -> None:
    with op.batch_alter_table("messages", table_kwargs=MESSAGES_TABLE_KWARGS) as batch:
        batch.drop_constraint(op.f("uq_messages_author"), type_="unique")
        batch.create_unique_constraint(NEW, ["author", "room", "client_msg_id"])


def downgrade() -> None:
    # Two rooms may now hold one (author, client_msg_id): the older rule cannot come back
    # without choosing which to drop, so the downgrade keeps the first and clears the rest.
    op.execute(
        "UPDATE messages SET client_msg_id = NULL WHERE id NOT IN ("
        " SELECT MIN(id) FROM messages WHERE client_msg_id IS NOT NULL"
        " GROUP BY author, client_msg_id) AND client_msg_id IS NOT NULL"
    )
    with op.batch_alter_table("messages", table_kwargs=MESSAGES_TABLE_KWARGS) as batch:
        batch.drop_constraint(NEW, type_="unique")
        batch.create_unique_constraint(op.f("uq_messages_author"), ["author", "client_msg_id"])
