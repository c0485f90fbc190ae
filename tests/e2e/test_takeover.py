"""Issue 26's takeover test: two coordinator replicas on one PostgreSQL database drive a protection job; the
replica driving it is SIGKILLed while round 1 is previewing, and the other takes the job over once the dead one's
lease expires; the killed one comes back as a fresh replica (a new pod: its own empty data folder), and the
replica driving the job is SIGKILLed again while the dataset is anonymized. The job succeeds, with every round
charged once, the rounds as the reviewer answered them, and exactly one anonymized version. A job driven by one
replica is cancelled through the other, and a job goes on after PostgreSQL restarts in its middle.

Every service is `umbra serve` in its own process. Who drives the job is read from its lease in the database
(holder `host:pid:…`); the tenant talks to whichever replica is alive, as it would through a Kubernetes Service.
The anonymizer reaches the ledger at both replicas' addresses (gRPC's `ipv4:` list, as a Kubernetes Service would
spread them): when one dies, its calls go to the other."""

from __future__ import annotations

import time

import pytest
import sqlalchemy

from e2e.jobkit import (RESERVED, SCRIPT, Stack, Tenant, check_charges, check_versions, kill, review,
                        write_generator)
from support import free_port, serve_process
from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.storage.local import LocalObjectStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
LEASE_SECONDS = 6.0
FACES = 60
INTENSITIES = [0.5, 0.75, 0.625]  # SCRIPT's rounds: more, less, accept


class Replicas(Stack):
    """Stack's anonymizer and object store, with coordinator replicas 0 and 1 on one PostgreSQL database."""

    def __init__(self, home, database: str):
        super().__init__(home, replicas=1)
        self.database = database
        self.ports = [self.coordinator_port, free_port()]
        self.processes: list = [None, None]
        self.generation = 0  # each start is a fresh replica: its own data folder, as a new pod

    def target_of(self, index: int) -> str:
        return f"127.0.0.1:{self.ports[index]}"

    def start_replica(self, index: int) -> None:
        self.generation += 1
        self.processes[index] = serve_process(
            "coordinator", self.home, self.ports[index], UMBRA_GRACE_SECONDS="2", UMBRA_DATABASE_URL=self.database,
            UMBRA_JOB_LEASE_SECONDS=str(LEASE_SECONDS), UMBRA_STORE_DIR=str(self.objects),
            UMBRA_COORDINATOR_DATA_DIR=str(self.home / f"coordinator-{self.generation}"),
            UMBRA_ANONYMIZER_URLS=",".join(f"127.0.0.1:{p}" for p in self.anonymizer_ports))
        self.coordinator = self.processes[index]

    def start_anonymizers(self) -> None:
        """The anonymizer, reaching the ledger at either replica (pick_first over both addresses)."""
        self.anonymizers[0] = serve_process(
            "anonymizer", self.home, self.anonymizer_ports[0], UMBRA_GRACE_SECONDS="2",
            UMBRA_COORDINATOR_URL="ipv4:" + ",".join(f"127.0.0.1:{p}" for p in self.ports),
            UMBRA_STORE_DIR=str(self.objects), UMBRA_ANONYMIZER_DATA_DIR=str(self.home / "anonymizer-0"))

    def close(self) -> None:
        for process in self.processes:
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(30)
        self.coordinator = None
        super().close()


def holder(engine: sqlalchemy.Engine, tenant: str, job: str) -> tuple[str, str]:
    """(lease holder, the job's operation) as the database says."""
    with engine.connect() as connection:
        row = connection.execute(sqlalchemy.text("SELECT lease_holder, operation FROM jobs WHERE tenant = :t "
                                                 "AND id = :j"), {"t": tenant, "j": job}).one()
    return row[0], row[1]


def driver(replicas: Replicas, engine, tenant: str, job: str) -> int:
    """Which replica (0 or 1) holds the job's lease."""
    lease, _ = holder(engine, tenant, job)
    pids = [str(p.pid) if p is not None else "" for p in replicas.processes]
    found = [i for i, pid in enumerate(pids) if pid and f":{pid}:" in lease]
    assert found, (lease, pids)
    return found[0]


def taken_over(replicas: Replicas, engine, tenant: str, job: str, dead: int, timeout: float) -> float:
    """Seconds until the other replica holds the job's lease (after `dead` was killed)."""
    start = time.monotonic()
    alive = str(replicas.processes[1 - dead].pid)
    while f":{alive}:" not in holder(engine, tenant, job)[0]:
        assert time.monotonic() - start < timeout, f"no takeover in {timeout} s: {holder(engine, tenant, job)}"
        time.sleep(0.1)
    return time.monotonic() - start


def wait_for_stage(tenant: Tenant, target: str, engine, job: str, starts: tuple[str, ...], timeout: float = 300):
    """Polls the job's current operation (the database names it) on `target` until its stage starts so."""
    deadline = time.monotonic() + timeout
    while True:
        _, operation = holder(engine, tenant.name, job)
        done, stage = Tenant(target, tenant.name, tenant.key).stage(operation) if operation else (False, "")
        if any(stage.startswith(s) for s in starts):
            return stage
        assert time.monotonic() < deadline, f"no stage {starts} in {timeout} s"
        time.sleep(0.02)


def test_a_job_survives_its_driving_replica_killed_while_previewing_and_again_while_anonymizing(
        postgres_server, tmp_path):
    database = postgres_server.database("takeover")
    engine = sqlalchemy.create_engine(database)
    replicas = Replicas(tmp_path / "home", database)
    replicas.home.mkdir()
    try:
        replicas.start_replica(0)
        replicas.start_replica(1)
        replicas.start_anonymizers()
        tenant = Tenant.create(replicas.target_of(0), "acme")
        assert tenant.upload(tmp_path / "faces", FACES).sample_count == FACES
        write_generator(LocalObjectStore(replicas.objects), "umbra-acme")
        tenant.create_job("protect")
        assert driver(replicas, engine, "acme", "protect") == 0

        # 1. the driver dies while round 1's preview is being made
        wait_for_stage(tenant, replicas.target_of(0), engine, "protect", ("round 1: previewing",))
        kill(replicas.processes[0])
        first = taken_over(replicas, engine, "acme", "protect", dead=0, timeout=LEASE_SECONDS + 30)
        survivor = Tenant(replicas.target_of(1), "acme", tenant.key)
        replicas.start_replica(0)  # back as a fresh replica

        # 2. the reviewer answers (on either replica), and the driver dies while the dataset is anonymized
        review(survivor, "protect", SCRIPT)
        driving = driver(replicas, engine, "acme", "protect")
        wait_for_stage(survivor, replicas.target_of(driving), engine, "protect", ("anonymizing the dataset",))
        kill(replicas.processes[driving])
        second = taken_over(replicas, engine, "acme", "protect", dead=driving, timeout=LEASE_SECONDS + 30)

        alive = Tenant(replicas.target_of(1 - driving), "acme", tenant.key)
        deadline = time.monotonic() + 600
        while (job := alive.job("protect")).state not in (js.ProtectionJob.STATE_SUCCEEDED,
                                                            js.ProtectionJob.STATE_FAILED):
            assert time.monotonic() < deadline, job
            time.sleep(0.5)
        assert job.state == js.ProtectionJob.STATE_SUCCEEDED, job.error
        assert [r.intensity for r in alive.rounds("protect")] == INTENSITIES
        check_charges(alive, "protect", len(SCRIPT), version=2)
        check_versions(alive, job, FACES)
        for seconds in (first, second):
            assert seconds <= LEASE_SECONDS + 5, (first, second)
        print(f"takeover_seconds: {first:.1f}, {second:.1f} (lease {LEASE_SECONDS} s)")
    finally:
        replicas.close()
        engine.dispose()


def test_a_job_driven_by_one_replica_is_cancelled_through_the_other(postgres_server, tmp_path):
    """CancelProtectionJob on the replica that does not drive the job: the cancel is written to the job's row, and
    the driver stops the job at its next lease heartbeat (every lease / 3), releasing what it reserved."""
    database = postgres_server.database("cancel_across")
    engine = sqlalchemy.create_engine(database)
    replicas = Replicas(tmp_path / "home", database)
    replicas.home.mkdir()
    try:
        replicas.start_replica(0)
        replicas.start_replica(1)
        replicas.start_anonymizers()
        tenant = Tenant.create(replicas.target_of(0), "acme")
        tenant.upload(tmp_path / "faces", FACES)
        write_generator(LocalObjectStore(replicas.objects), "umbra-acme")
        tenant.create_job("protect")
        tenant.preview("protect", 1)  # round 1 awaits feedback
        assert driver(replicas, engine, "acme", "protect") == 0
        other = Tenant(replicas.target_of(1), "acme", tenant.key)
        asked = time.monotonic()
        answer = other.jobs.CancelProtectionJob(js.CancelProtectionJobRequest(name="jobs/protect"), timeout=30)
        assert answer.job.state == js.ProtectionJob.STATE_AWAITING_FEEDBACK  # stops at the driver's next beat
        while (job := other.job("protect")).state != js.ProtectionJob.STATE_CANCELLED:
            assert time.monotonic() - asked < LEASE_SECONDS + 30, job
            time.sleep(0.2)
        print(f"cancelled {time.monotonic() - asked:.1f} s after the call on the other replica")
        assert not [e.request_id for e in other.ledger() if e.state == RESERVED], "a reservation was left behind"
        assert replicas.processes[0].poll() is None  # the driver is alive: it stopped the job itself
    finally:
        replicas.close()
        engine.dispose()


def test_a_job_goes_on_after_postgresql_restarts_in_its_middle(postgres_server, tmp_path):
    """PostgreSQL stops while round 1 awaits feedback, for longer than the lease: calls answer UNAVAILABLE
    meanwhile; once it is back the reviewer answers, and the job succeeds, every round charged once and one
    anonymized version."""
    import grpc

    database = postgres_server.database("pg_restart")
    engine = sqlalchemy.create_engine(database)
    replicas = Replicas(tmp_path / "home", database)
    replicas.home.mkdir()
    try:
        replicas.start_replica(0)
        replicas.start_replica(1)
        replicas.start_anonymizers()
        tenant = Tenant.create(replicas.target_of(0), "acme")
        tenant.upload(tmp_path / "faces", FACES)
        write_generator(LocalObjectStore(replicas.objects), "umbra-acme")
        tenant.create_job("protect")
        tenant.preview("protect", 1)
        engine.dispose()
        postgres_server.stop()
        try:
            for index in (0, 1):
                with pytest.raises(grpc.RpcError) as down:
                    Tenant(replicas.target_of(index), "acme", tenant.key).job("protect")
                assert down.value.code() == grpc.StatusCode.UNAVAILABLE
            time.sleep(LEASE_SECONDS + 2)  # every lease expires meanwhile
        finally:
            postgres_server.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                tenant.job("protect")
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the coordinator did not come back after the database"
                time.sleep(0.5)
        review(tenant, "protect", SCRIPT)
        deadline = time.monotonic() + 600
        while (job := tenant.job("protect")).state not in (js.ProtectionJob.STATE_SUCCEEDED,
                                                             js.ProtectionJob.STATE_FAILED):
            assert time.monotonic() < deadline, job
            time.sleep(0.5)
        assert job.state == js.ProtectionJob.STATE_SUCCEEDED, job.error
        assert [r.intensity for r in tenant.rounds("protect")] == INTENSITIES
        check_charges(tenant, "protect", len(SCRIPT), version=2)
        check_versions(tenant, job, FACES)
        assert all(p.poll() is None for p in replicas.processes)
    finally:
        replicas.close()
        engine.dispose()
