"""drafts remember a Post press's claim (when, which variant, which workspace), so a draft a
crash left ``posting`` can be settled: recorded if Slack has it, released if not

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 04:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("drafts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("claim_index", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("claim_team", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("drafts", schema=None) as batch_op:
        batch_op.drop_column("claim_team")
        batch_op.drop_column("claim_index")
        batch_op.drop_column("claimed_at")
