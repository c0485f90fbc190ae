"""A job's cancel request, in its row: CancelProtectionJob on any replica sets it, and the replica driving the job
(its lease holder) cancels the job's operation at its next heartbeat (umbra.services.coordinator.job_leases).

Revision ID: 0003
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0")


def downgrade() -> None:
    raise NotImplementedError("the coordinator's schema is never downgraded: restore a backup instead")
