"""at most one active adapter per dataset

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 10:35:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE = sa.text("status = 'active'")


def upgrade() -> None:
    # Where a race left two active adapters, the newest stays active and the others retire.
    op.execute(
        "UPDATE adapters SET status = 'retired' WHERE status = 'active' AND version < "
        "(SELECT MAX(a.version) FROM adapters a "
        "WHERE a.dataset_id = adapters.dataset_id AND a.status = 'active')"
    )
    op.create_index(
        "uq_adapters_one_active", "adapters", ["dataset_id"], unique=True,
        sqlite_where=ACTIVE, postgresql_where=ACTIVE,
    )  # fmt: skip


def downgrade() -> None:
    op.drop_index("uq_adapters_one_active", table_name="adapters")
