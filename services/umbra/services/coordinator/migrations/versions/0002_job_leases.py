"""Job leases: the replica that drives a job holds its lease (holder, expiry) and renews it while it lives; a
replica that finds a lease expired takes the job over (umbra.services.coordinator.job_leases).

Revision ID: 0002
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE jobs ADD COLUMN lease_holder TEXT NOT NULL DEFAULT ''")
    op.execute("ALTER TABLE jobs ADD COLUMN lease_expiry DOUBLE PRECISION NOT NULL DEFAULT 0")
    op.execute("CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state)")


def downgrade() -> None:
    raise NotImplementedError("the coordinator's schema is never downgraded: restore a backup instead")
