"""pending edits and prompt subjects on examples

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 06:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("examples", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subject_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("pending_text", sa.Text(), nullable=True))
        batch_op.create_index(batch_op.f("ix_examples_subject_id"), ["subject_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("examples", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_examples_subject_id"))
        batch_op.drop_column("pending_text")
        batch_op.drop_column("subject_id")
