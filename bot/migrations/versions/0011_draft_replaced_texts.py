"""drafts keep the texts a regeneration replaced, and who discarded them (preference pairs)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 13:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("drafts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("replaced", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("discarded_by", sa.String(length=32), nullable=True))
    with op.batch_alter_table("drafts", schema=None) as batch_op:
        batch_op.alter_column("replaced", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("drafts", schema=None) as batch_op:
        batch_op.drop_column("discarded_by")
        batch_op.drop_column("replaced")
