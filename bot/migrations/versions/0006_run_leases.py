"""training run leases, and one running run per dataset

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 10:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUNNING = sa.text("status = 'running'")


def upgrade() -> None:
    # Runs left running by workers of the old version have no lease: they go back to the queue,
    # oldest kept per dataset, so the unique index below can be built.
    op.execute("UPDATE training_runs SET status = 'queued', worker_id = NULL "
               "WHERE status = 'running'")  # fmt: skip
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "uq_training_runs_one_running", "training_runs", ["dataset_id"], unique=True,
        sqlite_where=RUNNING, postgresql_where=RUNNING,
    )  # fmt: skip


def downgrade() -> None:
    op.drop_index("uq_training_runs_one_running", table_name="training_runs")
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.drop_column("lease_until")
