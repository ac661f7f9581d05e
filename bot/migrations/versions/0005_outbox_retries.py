"""outbox retries: available_at (backoff) and dead_at (dead letter)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 10:15:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("available_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("dead_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.drop_index("ix_outbox_events_pending")
    op.execute("UPDATE outbox_events SET available_at = created_at")
    with op.batch_alter_table("outbox_events", schema=None) as batch_op:
        batch_op.alter_column("available_at", existing_type=sa.DateTime(timezone=True),
                              nullable=False)  # fmt: skip
        batch_op.create_index(
            "ix_outbox_events_pending", ["delivered_at", "dead_at", "available_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox_events", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_events_pending")
        batch_op.drop_column("dead_at")
        batch_op.drop_column("available_at")
        batch_op.create_index("ix_outbox_events_pending", ["delivered_at", "id"], unique=False)
