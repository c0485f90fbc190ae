"""The coordinator's first schema: tenants, API keys, datasets and versions, the privacy ledger, jobs and rounds.

Every table is created only where it is missing, so a SQLite file from before migrations upgrades in place (its
tables are kept as they are, rows included). Types are the portable ones: DOUBLE PRECISION (SQLite reads it as
REAL; PostgreSQL's REAL would be single precision) and BYTEA for bytes on PostgreSQL (BLOB on SQLite).

Revision ID: 0001
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    id TEXT PRIMARY KEY, display_name TEXT NOT NULL, state TEXT NOT NULL,
    budget_epsilon DOUBLE PRECISION NOT NULL, budget_delta DOUBLE PRECISION NOT NULL,
    create_time DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    tenant TEXT NOT NULL, id TEXT NOT NULL, display_name TEXT NOT NULL, description TEXT NOT NULL,
    create_time DOUBLE PRECISION NOT NULL, request_id TEXT, PRIMARY KEY (tenant, id));
CREATE TABLE IF NOT EXISTS dataset_versions (
    tenant TEXT NOT NULL, dataset TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL,
    origin TEXT NOT NULL, shard_count INTEGER NOT NULL, request_id TEXT, stats TEXT NOT NULL DEFAULT '{}',
    error TEXT NOT NULL DEFAULT '', create_time DOUBLE PRECISION NOT NULL, commit_time DOUBLE PRECISION,
    PRIMARY KEY (tenant, dataset, version));
CREATE UNIQUE INDEX IF NOT EXISTS dataset_versions_request
    ON dataset_versions (tenant, dataset, request_id) WHERE request_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, secret_sha256 TEXT NOT NULL, display_name TEXT NOT NULL,
    create_time DOUBLE PRECISION NOT NULL, revoke_time DOUBLE PRECISION);
CREATE TABLE IF NOT EXISTS ledger_entries (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, dataset TEXT NOT NULL, request_id TEXT NOT NULL,
    spent_by TEXT NOT NULL, state TEXT NOT NULL, epsilon DOUBLE PRECISION NOT NULL, delta DOUBLE PRECISION NOT NULL,
    cost TEXT NOT NULL, create_time DOUBLE PRECISION NOT NULL, update_time DOUBLE PRECISION NOT NULL,
    UNIQUE (tenant, request_id));
CREATE INDEX IF NOT EXISTS ledger_entries_tenant ON ledger_entries (tenant, state);
CREATE TABLE IF NOT EXISTS jobs (
    tenant TEXT NOT NULL, id TEXT NOT NULL, state TEXT NOT NULL, stage TEXT NOT NULL, spec {blob} NOT NULL,
    operation TEXT NOT NULL DEFAULT '', request_id TEXT, outputs TEXT NOT NULL DEFAULT '{}',
    error TEXT NOT NULL DEFAULT '', create_time DOUBLE PRECISION NOT NULL, update_time DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (tenant, id));
CREATE TABLE IF NOT EXISTS job_rounds (
    tenant TEXT NOT NULL, job TEXT NOT NULL, round INTEGER NOT NULL, intensity DOUBLE PRECISION NOT NULL,
    state TEXT NOT NULL, feedback TEXT NOT NULL DEFAULT '', flagged TEXT NOT NULL DEFAULT '[]',
    preview TEXT NOT NULL DEFAULT '{}', request_id TEXT, create_time DOUBLE PRECISION NOT NULL,
    answer_time DOUBLE PRECISION, PRIMARY KEY (tenant, job, round))
"""


def upgrade() -> None:
    blob = "BYTEA" if op.get_bind().dialect.name == "postgresql" else "BLOB"
    for statement in SCHEMA.replace("{blob}", blob).split(";"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("the coordinator's schema is never downgraded: restore a backup instead")
