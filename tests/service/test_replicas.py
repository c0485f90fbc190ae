"""Two coordinator processes on one PostgreSQL database (issue 26): what one replica writes the other sees, one
budget for both, an upload on one that the other's deletion stops, and the ways a database can refuse to be used,
each said in one line at start.

Every coordinator is `umbra serve coordinator` in its own process (tests/support.py serve_process) against the
real PostgreSQL server that deploy/postgres/pg.sh starts (the `postgres_server` fixture), each test on a fresh
database of its own."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import grpc
import pytest
import sqlalchemy

from support import ADMIN_KEY, SERVICE_TOKEN, create_tenant, free_port, serve_process, status_details
from uploads import HeldStream, face, shard_of
from umbra.client.channel import open_channel
from umbra.client.datasets import DatasetsClient
from umbra.common.v1 import privacy_pb2
from umbra.coordinator.v1 import dataset_service_pb2 as cds
from umbra.coordinator.v1 import dataset_service_pb2_grpc, tenant_service_pb2, tenant_service_pb2_grpc
from umbra.coordinator.v1 import ledger_service_pb2 as ls
from umbra.coordinator.v1 import ledger_service_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def database(postgres_server, request) -> str:
    return postgres_server.database(f"replicas_{request.node.name[:40].lower()}")


@pytest.fixture
def two(database, tmp_path):
    """Coordinators A and B: their own data folders and ports, one database and one object store."""
    processes, targets = [], []
    for name in ("a", "b"):
        home = tmp_path / name
        home.mkdir()
        port = free_port()
        processes.append(serve_process("coordinator", home, port, UMBRA_DATABASE_URL=database,
                                       UMBRA_STORE_DIR=str(tmp_path / "objects")))
        targets.append(f"127.0.0.1:{port}")
    yield targets
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(30)


def tenants(target: str, credential: str = ADMIN_KEY) -> tenant_service_pb2_grpc.TenantServiceStub:
    return tenant_service_pb2_grpc.TenantServiceStub(open_channel(target, credential))


def datasets(target: str, key: str) -> list[str]:
    stub = dataset_service_pb2_grpc.DatasetServiceStub(open_channel(target, key))
    return [d.name for d in stub.ListDatasets(cds.ListDatasetsRequest(), timeout=30).datasets]


def test_a_tenant_made_on_one_replica_is_seen_on_the_other_and_a_revoked_key_is_refused_there(two):
    a, b = two
    key = create_tenant(a, "acme", budget=(3.0, 1e-5))
    seen = tenants(b).GetTenant(tenant_service_pb2.GetTenantRequest(name="tenants/acme"), timeout=30).tenant
    assert (seen.name, seen.privacy_budget.epsilon) == ("tenants/acme", 3.0)
    assert datasets(b, key) == []  # B accepts the key A issued
    second = tenants(b, key).CreateApiKey(tenant_service_pb2.CreateApiKeyRequest(display_name="ci"), timeout=30)
    assert datasets(a, second.api_key_secret) == []  # and A the one B issued
    tenants(a, key).RevokeApiKey(tenant_service_pb2.RevokeApiKeyRequest(name=second.api_key.name), timeout=30)
    with pytest.raises(grpc.RpcError) as refused:
        datasets(b, second.api_key_secret)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def reserve(target: str, tenant: str, request_id: str, epsilon: float) -> ls.ReservePrivacyChargeResponse:
    stub = ledger_service_pb2_grpc.LedgerServiceStub(open_channel(target, SERVICE_TOKEN, tenant=tenant))
    cost = privacy_pb2.PrivacyCost(mechanism=privacy_pb2.PRIVACY_MECHANISM_RANDOMIZED_RESPONSE, epsilon=epsilon,
                                   description="attribute gender")
    return stub.ReservePrivacyCharge(ls.ReservePrivacyChargeRequest(
        dataset="datasets/faces", cost=cost, request_id=request_id, spent_by="test"), timeout=60)


def test_eight_reservations_racing_across_two_replicas_for_a_budget_that_pays_for_one_give_one_winner(two):
    a, b = two
    key = create_tenant(a, "racer", budget=(1.5, 1e-6))
    outcomes: list[str] = []
    start = threading.Barrier(8)

    def race(i: int) -> None:
        start.wait()
        try:
            reserve((a, b)[i % 2], "racer", f"race-{i}", 1.0)
            outcomes.append("reserved")
        except grpc.RpcError as exc:
            outcomes.append(status_details(exc).get("reason", exc.code().name))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(outcomes) == ["PRIVACY_BUDGET_EXHAUSTED"] * 7 + ["reserved"]
    for target in two:
        balance = ledger_service_pb2_grpc.LedgerServiceStub(open_channel(target, key)).GetPrivacyBalance(
            ls.GetPrivacyBalanceRequest(), timeout=30)
        assert (balance.spent.epsilon, balance.remaining.epsilon, balance.reserved_entries) == (1.0, 0.5, 1)


def test_an_upload_streaming_to_one_replica_while_the_other_deletes_the_dataset_writes_nothing_after(two, tmp_path):
    """The dataset's write lock is a PostgreSQL advisory lock: B's deletion waits for writes landing on A, and A's
    stream, finished after the deletion, lands nothing."""
    a, b = two
    key = create_tenant(a, "acme")
    on_a = DatasetsClient(open_channel(a, key))
    on_a.ensure("doomed")
    created = on_a.stub.CreateDatasetVersion(cds.CreateDatasetVersionRequest(parent="datasets/doomed", shard_count=1),
                                             timeout=30)
    shard, _ = shard_of({"a": face(1), "b": face(2)})
    stream = HeldStream(on_a, created.dataset_version.name, shard)  # half of the shard has reached A
    dataset_service_pb2_grpc.DatasetServiceStub(open_channel(b, key)).DeleteDataset(
        cds.DeleteDatasetRequest(name="datasets/doomed"), timeout=30)
    error = stream.finish()
    assert error is not None and error.code() == grpc.StatusCode.NOT_FOUND, error
    assert datasets(a, key) == datasets(b, key) == []
    assert not [p for p in (tmp_path / "objects").rglob("*") if p.is_file() and "doomed" in str(p)]


def test_calls_answer_unavailable_while_the_database_restarts_and_work_again_after(two, postgres_server):
    a, _ = two
    key = create_tenant(a, "acme")
    postgres_server.stop()
    try:
        with pytest.raises(grpc.RpcError) as down:
            datasets(a, key)
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        postgres_server.start()
    deadline = time.monotonic() + 30
    while True:  # the pool's pre-ping replaces the connections the restart broke
        try:
            assert datasets(a, key) == []
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline, "the coordinator did not recover from the database's restart"
            time.sleep(0.5)


def serve_and_fail(tmp_path, **settings: str) -> subprocess.CompletedProcess:
    """`umbra serve coordinator` that is expected to refuse to start: its exit and what it printed."""
    import os

    from support import ADMIN_KEY as admin

    env = dict(os.environ, UMBRA_HOME=str(tmp_path), UMBRA_COORDINATOR_PORT=str(free_port()),
               UMBRA_SERVICE_TOKEN=SERVICE_TOKEN, UMBRA_ADMIN_KEY=admin, **settings)
    return subprocess.run([sys.executable, "-m", "umbra.cli.main", "serve", "coordinator"], env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_database_that_cannot_be_reached_stops_the_start_with_one_line(tmp_path):
    closed = free_port()
    result = serve_and_fail(tmp_path, UMBRA_DATABASE_URL=f"postgresql+psycopg://umbra:secret@127.0.0.1:{closed}/x")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "cannot be opened" in result.stderr and "secret" not in result.stderr  # the password is never shown
    assert len([line for line in result.stderr.splitlines() if line.startswith("umbra serve")]) == 1


def test_a_schema_newer_than_the_code_is_refused_naming_both_revisions(database, tmp_path):
    from umbra.services.coordinator.db import CoordinatorDB

    db = CoordinatorDB(database)
    known = db.revision
    db.close()
    engine = sqlalchemy.create_engine(database)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    result = serve_and_fail(tmp_path, UMBRA_DATABASE_URL=database)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "9999" in result.stderr and known in result.stderr, result.stderr


def test_a_second_coordinator_on_one_sqlite_file_is_refused_with_the_reason(tmp_path):
    first = serve_process("coordinator", tmp_path, free_port())
    try:
        result = serve_and_fail(tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "SQLite" in result.stderr and "UMBRA_DATABASE_URL" in result.stderr, result.stderr
    finally:
        first.terminate()
        first.wait(30)


def test_an_existing_sqlite_file_upgrades_in_place(tmp_path):
    """A coordinator.sqlite3 from before migrations (its tables, no revision) keeps its rows and gets the newest
    schema."""
    import sqlite3

    from umbra.services.coordinator.db import CoordinatorDB

    path = tmp_path / "coordinator.sqlite3"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE tenants (id TEXT PRIMARY KEY, display_name TEXT NOT NULL, state TEXT NOT NULL,
            budget_epsilon REAL NOT NULL, budget_delta REAL NOT NULL, create_time REAL NOT NULL);
        INSERT INTO tenants VALUES ('acme', 'Acme', 'ACTIVE', 3.0, 1e-5, 1.0);
        CREATE TABLE jobs (tenant TEXT NOT NULL, id TEXT NOT NULL, state TEXT NOT NULL, stage TEXT NOT NULL,
            spec BLOB NOT NULL, operation TEXT NOT NULL DEFAULT '', request_id TEXT,
            outputs TEXT NOT NULL DEFAULT '{}', error TEXT NOT NULL DEFAULT '', create_time REAL NOT NULL,
            update_time REAL NOT NULL, PRIMARY KEY (tenant, id));
    """)
    old.close()
    db = CoordinatorDB(path)
    try:
        assert db.tenant("acme").budget_epsilon == 3.0
        columns = {row[1] for row in db.fetch_all("PRAGMA table_info(jobs)", ())}
        assert {"lease_holder", "lease_expiry"} <= columns
        assert db.sql.revision() == db.revision
    finally:
        db.close()
