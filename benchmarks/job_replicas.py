"""benchmarks.job's replicas part (issue 26): coordinator replicas on PostgreSQL, against one coordinator on SQLite.

    python -m benchmarks.job --replicas-only [--quick] [--data DIR] [--faces N] [--local-store]

Everything runs as its own `umbra serve` process on one object store (the S3 server, or a folder): a PostgreSQL
server of the benchmark's own (deploy/postgres/pg.sh with its own data folder, .build/postgres-bench, on a free port,
stopped at the end), a fresh database on it, and two stacks, started at once and kept for the whole run:

- **one_sqlite**: one coordinator on SQLite (the default) and one anonymizer;
- **two_pg**: two coordinator replicas on the PostgreSQL database (each its own data folder, as two pods) and one
  anonymizer, configured as the first one, whose ledger calls go to either replica (`ipv4:P0,P1`).

Every coordinator has the same lease, LEASE_SECONDS (UMBRA_JOB_LEASE_SECONDS). Each stack has a tenant with the same
faces uploaded and the same DP generator (copied in the object store), and jobs with the same spec.

- `previews_per_minute_two_pg_vs_one_sqlite`: phases that alternate between the stacks (A B B A ...: a drift of the
  machine's load weighs on both alike). A phase starts JOBS jobs at once, job i through coordinator i mod (number of
  coordinators); each job's reviewer talks to the coordinator it created the job on (its operation lives there),
  fetches every preview (GetPreview) and answers more privacy, then less, ..., until round ROUNDS is shown, and
  cancels the job. The phase's rate is JOBS x ROUNDS previews over the time from the first CreateProtectionJob to the
  last preview shown; a stack's rate is its previews over its phases' time. One untimed job of one round on every
  coordinator first loads what a process loads once (the face recognizer, the generator).
- `takeover_seconds`: a job created on replica 0 of two_pg is SIGKILLed with its driver (the replica whose pid is in
  the job's `lease_holder`, read from the database) while round 1 is previewing (and, in a full run, once more while
  the dataset is anonymized, after the dead replica came back as a fresh one): the seconds from the SIGKILL until
  the other replica holds the job's lease, and until the job has moved on there (round 1 shown, or the anonymized
  version committed). The headline is the largest. Unless this is a --quick run beside the whole jobs, the job then
  runs to its report on the survivor.
- `coordinator_peak_rss_mb`: VmHWM (/proc/<pid>/status) of each coordinator process, read just before it is
  killed or stopped: the peak resident memory over everything it ran.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from benchmarks.common import OUT, ROOT, create_tenant, free_port
from umbra.client.channel import open_channel
from umbra.client.datasets import DatasetsClient
from umbra.client.errors import UmbraRpcError
from umbra.client.operations import OperationsClient, progress_of
from umbra.common.v1 import refs_pb2
from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.coordinator.v1 import job_service_pb2_grpc
from umbra.storage import keys

LEASE_SECONDS = 6.0  # every coordinator's UMBRA_JOB_LEASE_SECONDS here (the default is 15)
TAKEOVER_SLACK = 5.0  # the goal: takeover within the lease + 5 s
PG_SH = ROOT / "deploy" / "postgres" / "pg.sh"
PG_DATA = ROOT / ".build" / "postgres-bench"  # the benchmark's own cluster; tests and the demo use the default one
DATABASE = "bench_job"
POLL = 0.25
SETTINGS = {  # jobs at once per phase, rounds per job, phases (A B B A ...), an untimed warm-up, where to kill
    "quick": {"jobs": 2, "rounds": 3, "phases": 4, "warmup": True, "kill_at": ("round 1: previewing",)},
    "full": {"jobs": 4, "rounds": 4, "phases": 8, "warmup": True,
             "kill_at": ("round 1: previewing", "anonymizing the dataset")},
}
TARGETS = {"coordinator_peak_rss_mb": 300.0, "previews_ratio": 0.9}
UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


# -- processes -----------------------------------------------------------------------------------------------

@dataclass
class Served:
    """One `umbra serve <service>` process."""

    service: str
    proc: subprocess.Popen
    port: int
    log: Path
    peak_rss_mb: float | None = None  # VmHWM, read before it is killed or stopped

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_peak(self) -> float | None:
        """VmHWM: the process's peak resident set so far, in MB (None once it has exited)."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_rss_mb = round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
        return self.peak_rss_mb

    def kill(self) -> float:
        """SIGKILL (nothing is flushed, no handler runs); returns the monotonic time it was sent."""
        self.read_peak()
        self.proc.send_signal(signal.SIGKILL)
        sent = time.monotonic()
        self.proc.wait(timeout=30)
        return sent

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.read_peak()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def serve(service: str, env: dict[str, str], port: int = 0, timeout: float = 180.0) -> Served:
    """Starts `umbra serve <service>` with `env` (its UMBRA_HOME made here) and waits until it answers SERVING."""
    from umbra.client import health_of

    port = port or free_port()
    home = Path(env["UMBRA_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    log = home / f"{service}-{time.time_ns()}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "umbra.cli.main", "serve", service],
                                env=dict(env, **{f"UMBRA_{service.upper()}_PORT": str(port)}), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    served = Served(service, proc, port, log)
    deadline = time.monotonic() + timeout
    while health_of(served.target, timeout=0.5) != "SERVING":
        if proc.poll() is not None or time.monotonic() > deadline:
            served.stop()
            raise RuntimeError(f"{service} did not start; see {log}")
        time.sleep(0.2)
    return served


@contextmanager
def served(service: str, env: dict[str, str], port: int = 0) -> Iterator[Served]:
    process = serve(service, env, port)
    try:
        yield process
    finally:
        process.stop()


@contextmanager
def postgres() -> Iterator[str]:
    """The benchmark's own PostgreSQL server (pg.sh, its own data folder, a free port) with a fresh database;
    yields the database's URL and stops the server afterwards."""
    env = dict(os.environ, UMBRA_PG_DATA=str(PG_DATA), UMBRA_PG_PORT=str(free_port()))
    subprocess.run(["bash", str(PG_SH), "stop"], env=env, capture_output=True)  # one left by an interrupted run
    subprocess.run(["bash", str(PG_SH), "start"], env=env, check=True)
    try:
        lines = subprocess.run(["bash", str(PG_SH), "env"], env=env, capture_output=True, text=True,
                               check=True).stdout
        url = dict(line.split("=", 1) for line in lines.splitlines() if "=" in line)["UMBRA_DATABASE_URL"]
        yield fresh_database(url, DATABASE)
    finally:
        subprocess.run(["bash", str(PG_SH), "stop"], env=env, check=False)


def fresh_database(url: str, name: str) -> str:
    """Database `name` on the server of `url`, dropped first if a run left one; returns its URL."""
    import psycopg
    from psycopg import sql

    server = url.rsplit("/", 1)[0]
    with psycopg.connect(server.replace("postgresql+psycopg://", "postgresql://", 1) + "/postgres",
                         autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return f"{server}/{name}"


# -- the two stacks ------------------------------------------------------------------------------------------

@dataclass
class Stack:
    name: str  # "one_sqlite" or "two_pg"
    coordinators: list[Served]
    anonymizer: Served
    env: dict[str, str]  # the coordinators' (to start a replica again)
    tenant: str = ""
    key: str = ""
    retired: list[Served] = field(default_factory=list)  # replicas killed during the takeover

    def channel(self, index: int) -> grpc.Channel:
        return open_channel(self.coordinators[index].target, self.key)


def start_stack(stack: ExitStack, name: str, base: dict[str, str], scratch: Path, database: str = "",
                threads: int = 0) -> Stack:
    """A stack's coordinator(s) and its anonymizer: two replicas on `database`, or one on SQLite without it;
    `threads`: the coordinators' OMP_NUM_THREADS (0: unset, torch's default of one per core)."""
    count = 2 if database else 1
    ports = [free_port() for _ in range(count)]
    anonymizer_port = free_port()
    env = dict(base, UMBRA_GRACE_SECONDS="2", UMBRA_JOB_LEASE_SECONDS=str(LEASE_SECONDS),
               UMBRA_ANONYMIZER_URLS=f"127.0.0.1:{anonymizer_port}")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if database:
        env["UMBRA_DATABASE_URL"] = database
    coordinators = [stack.enter_context(served("coordinator", dict(env, UMBRA_HOME=str(scratch / f"{name}-{i}")),
                                               ports[i])) for i in range(count)]
    ledger = ",".join(f"127.0.0.1:{p}" for p in ports)
    anonymizer = stack.enter_context(served("anonymizer", dict(
        base, UMBRA_GRACE_SECONDS="2", UMBRA_HOME=str(scratch / f"{name}-anonymizer"),
        UMBRA_COORDINATOR_URL=f"ipv4:{ledger}" if database else ledger), anonymizer_port))
    return Stack(name, coordinators, anonymizer, env)


def copy_generator(store, source_bucket: str, bucket: str, model: str, version: int) -> None:
    """The generator's version, object by object (its record last: a version exists once its record does)."""
    prefix = f"models/{model}/v{version}/"
    found = sorted((info.key for info in store.list(source_bucket, prefix)), key=lambda k: k.endswith("record.json"))
    for object_key in found:
        store.put(bucket, object_key, store.get(source_bucket, object_key))


# -- previews per minute -------------------------------------------------------------------------------------

def _stage(operations: OperationsClient, name: str) -> tuple[bool, str]:
    op = operations.get(name)
    progress = progress_of(op)
    return op.done, progress.stage if progress is not None else ""


def review(stack: Stack, index: int, job: str, spec: js.ProtectionJobSpec, rounds: int, began: float) -> list[float]:
    """Creates the job on coordinator `index`, answers more privacy, less, ... until round `rounds` is shown, then
    cancels it; returns when each round was shown (seconds after `began`)."""
    channel = stack.channel(index)
    stub, operations = job_service_pb2_grpc.JobServiceStub(channel), OperationsClient(channel)
    op = stub.CreateProtectionJob(js.CreateProtectionJobRequest(job_id=job, spec=spec, request_id=str(uuid.uuid4())),
                                  timeout=60).operation
    shown: list[float] = []
    while len(shown) < rounds:
        done, stage = _stage(operations, op.name)
        if done:
            raise RuntimeError(f"jobs/{job} ended before round {rounds} was shown (stage {stage!r})")
        waiting = stage.startswith("round ") and stage.endswith(": awaiting feedback")
        if waiting and int(stage.split(":", 1)[0].removeprefix("round ")) > len(shown):
            shown.append(time.perf_counter() - began)
            preview = stub.GetPreview(js.GetPreviewRequest(job=f"jobs/{job}"), timeout=60)
            if len(shown) < rounds:
                answer = js.FEEDBACK_MORE_PRIVACY if len(shown) % 2 else js.FEEDBACK_LESS_PRIVACY
                stub.SubmitFeedback(js.SubmitFeedbackRequest(round=preview.round.name, feedback=answer,
                                                             request_id=str(uuid.uuid4())), timeout=60)
            continue
        time.sleep(POLL)
    stub.CancelProtectionJob(js.CancelProtectionJobRequest(name=f"jobs/{job}"), timeout=60)
    deadline = time.monotonic() + 120
    while not _stage(operations, op.name)[0]:  # the next phase starts with nothing of this one running
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs/{job} was still running 120 s after it was cancelled")
        time.sleep(POLL)
    return shown


def phase(stack: Stack, label: str, spec: js.ProtectionJobSpec, jobs: int, rounds: int,
          on_every_coordinator: bool = False) -> dict:
    """`jobs` jobs at once (or one on every coordinator), spread over the stack's coordinators."""
    count = len(stack.coordinators) if on_every_coordinator else jobs
    results: list[list[float] | BaseException] = [[] for _ in range(count)]
    began, load = time.perf_counter(), os.getloadavg()[0]

    def run(i: int) -> None:
        try:
            results[i] = review(stack, i % len(stack.coordinators), f"{label}-{i}", spec, rounds, began)
        except BaseException as exc:  # noqa: BLE001 - raised below, in the caller's thread
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise failed[0]
    seconds = max(max(r) for r in results)
    previews = count * rounds
    return {"stack": stack.name, "phase": label, "jobs": count, "rounds": rounds, "previews": previews,
            "seconds": round(seconds, 2), "previews_per_minute": round(previews / seconds * 60, 3),
            "first_round_shown_s": [round(r[0], 2) for r in results],
            "load_average_before": load, "load_average_after": os.getloadavg()[0]}


def previews_per_minute(stacks: dict[str, Stack], spec: js.ProtectionJobSpec, settings: dict) -> dict:
    one, two = stacks["one_sqlite"], stacks["two_pg"]
    for stack in (one, two) if settings["warmup"] else ():  # untimed: what each process loads once
        phase(stack, f"warmup-{stack.name.replace('_', '-')}", spec, 0, 1, on_every_coordinator=True)
    order = [one, two, two, one]  # A B B A, repeated
    phases = []
    for number in range(settings["phases"]):
        stack = order[number % 4]
        phases.append(phase(stack, f"{stack.name.replace('_', '-')}-{number}", spec, settings["jobs"],
                            settings["rounds"]))
        print(f"  phase {number} ({stack.name}): {phases[-1]['previews']} previews in {phases[-1]['seconds']} s = "
              f"{phases[-1]['previews_per_minute']:.2f}/min", flush=True)
    rate = {}
    for name in stacks:
        mine = [p for p in phases if p["stack"] == name]
        rate[name] = round(sum(p["previews"] for p in mine) / sum(p["seconds"] for p in mine) * 60, 3)
    return {"one_sqlite": rate["one_sqlite"], "two_pg": rate["two_pg"],
            "ratio": round(rate["two_pg"] / rate["one_sqlite"], 3), "jobs_at_once": settings["jobs"],
            "rounds_per_job": settings["rounds"], "order": [p["stack"] for p in phases], "phases": phases}


# -- takeover ------------------------------------------------------------------------------------------------

def _lease(engine, tenant: str, job: str) -> tuple[str, str, str]:
    """(lease holder, operation, state) of the job, as the database says."""
    import sqlalchemy

    with engine.connect() as connection:
        row = connection.execute(sqlalchemy.text("SELECT lease_holder, operation, state FROM jobs WHERE tenant = :t "
                                                 "AND id = :j"), {"t": tenant, "j": job}).one()
    return row[0], row[1], row[2]


def _driver(stack: Stack, engine, job: str) -> int:
    holder = _lease(engine, stack.tenant, job)[0]
    found = [i for i, c in enumerate(stack.coordinators) if f":{c.pid}:" in holder]
    if not found:
        raise RuntimeError(f"jobs/{job}: no live replica holds the lease ({holder!r})")
    return found[0]


def _wait_stage(stack: Stack, engine, job: str, index: int, starts: str, timeout: float = 600) -> str:
    """Polls the job's current operation (the database names it) on replica `index` until its stage starts so."""
    operations = OperationsClient(stack.channel(index))
    deadline = time.monotonic() + timeout
    while True:
        operation = _lease(engine, stack.tenant, job)[1]
        try:
            done, stage = _stage(operations, operation) if operation else (False, "")
        except UmbraRpcError as exc:  # the operation is another replica's (not taken over yet)
            if exc.code not in (*UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
                raise
            done, stage = False, ""
        if stage.startswith(starts):
            return stage
        if done or time.monotonic() > deadline:
            raise RuntimeError(f"jobs/{job}: no stage {starts!r} on replica {index} (last {stage!r})")
        time.sleep(0.05)


def takeover(stack: Stack, engine, spec: js.ProtectionJobSpec, kill_at: tuple[str, ...], carry_on: bool,
             scratch: Path) -> dict:
    """A job on replica 0, its driver SIGKILLed at each stage of `kill_at`: how long until the other replica holds
    its lease and the job has moved on there; then the job runs to its report (`carry_on`) or is cancelled."""
    job = "takeover"
    stub = job_service_pb2_grpc.JobServiceStub(stack.channel(0))
    stub.CreateProtectionJob(js.CreateProtectionJobRequest(job_id=job, spec=spec, request_id=str(uuid.uuid4())),
                             timeout=60)
    began, kills = time.monotonic(), []
    for number, stage in enumerate(kill_at):
        if number:  # the dead replica back as a fresh one (a new pod: its own empty data folder)
            dead = next(i for i, c in enumerate(stack.coordinators) if c.proc.poll() is not None)
            stack.retired.append(stack.coordinators[dead])
            home = scratch / f"{stack.name}-{dead}-again-{number}"
            stack.coordinators[dead] = serve("coordinator", dict(stack.env, UMBRA_HOME=str(home)),
                                             stack.coordinators[dead].port)
        driving = _driver(stack, engine, job)
        _wait_stage(stack, engine, job, driving, stage)
        survivor = stack.coordinators[1 - driving]
        killed = stack.coordinators[driving].kill()
        while f":{survivor.pid}:" not in _lease(engine, stack.tenant, job)[0]:
            if time.monotonic() - killed > LEASE_SECONDS + 60:
                raise RuntimeError(f"jobs/{job}: no takeover {LEASE_SECONDS + 60:.0f} s after the SIGKILL")
            time.sleep(0.02)
        taken = time.monotonic() - killed
        # moved on: round 1 shown again by the survivor, or the anonymized version committed there
        after = "round 1: awaiting feedback" if stage.startswith("round 1") else "committing"
        _wait_stage(stack, engine, job, 1 - driving, after)
        kills.append({"stage": stage, "killed": f"replica {driving}", "lease_taken_s": round(taken, 2),
                      "moved_on_s": round(time.monotonic() - killed, 2), "moved_on": after})
        print(f"  killed replica {driving} at {stage!r}: replica {1 - driving} held the lease after {taken:.1f} s "
              f"and reached {after!r} after {kills[-1]['moved_on_s']:.1f} s (lease {LEASE_SECONDS:g} s)", flush=True)
        if number == 0:
            survivor_stub = job_service_pb2_grpc.JobServiceStub(stack.channel(1 - driving))
            if not carry_on:
                survivor_stub.CancelProtectionJob(js.CancelProtectionJobRequest(name=f"jobs/{job}"), timeout=60)
                break
            preview = survivor_stub.GetPreview(js.GetPreviewRequest(job=f"jobs/{job}"), timeout=60)
            survivor_stub.SubmitFeedback(js.SubmitFeedbackRequest(round=preview.round.name,
                                                                  feedback=js.FEEDBACK_ACCEPT,
                                                                  request_id=str(uuid.uuid4())), timeout=60)
    state = ""
    deadline = time.monotonic() + 1800
    while state not in ("SUCCEEDED", "FAILED", "CANCELLED"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs/{job} did not end ({state})")
        time.sleep(0.5)
        state = _lease(engine, stack.tenant, job)[2]
    if carry_on and state != "SUCCEEDED":
        raise RuntimeError(f"jobs/{job} ended {state} after the takeover")
    return {"job": f"jobs/{job}", "lease_seconds": LEASE_SECONDS, "kills": kills, "final_state": state,
            "finished_by": stack.coordinators[1 - driving].pid,
            "job_seconds": round(time.monotonic() - began, 1), "ran_to_its_report": state == "SUCCEEDED"}


# -- the part ------------------------------------------------------------------------------------------------

def run(base: dict[str, str], scratch: Path, folder: Path, store, *, quick: bool, carry_on: bool, generator,
        train=None, threads: int = 0) -> dict:
    """The replicas part. `generator`: (bucket, ModelRef) of a generator trained on these faces, or None to have
    `train(anonymizer target, tenant)` train one (returning (GeneratorResult, seconds)). `threads`: every
    coordinator's OMP_NUM_THREADS (0: unset)."""
    settings = SETTINGS["quick" if quick else "full"]
    began = time.perf_counter()
    with ExitStack() as stack:
        database = stack.enter_context(postgres())
        stacks = {"one_sqlite": start_stack(stack, "one_sqlite", base, scratch, threads=threads),
                  "two_pg": start_stack(stack, "two_pg", base, scratch, database, threads)}
        # also the replicas started again during the takeover (first: the coordinators before their anonymizers)
        stack.callback(lambda: [c.stop() for s in stacks.values() for c in s.coordinators])
        started = time.perf_counter() - began
        for s in stacks.values():
            s.tenant, s.key = create_tenant(s.coordinators[0].target, base["UMBRA_ADMIN_KEY"], budget=(1e9, 0.5))
            uploaded = DatasetsClient(s.channel(0)).upload(folder, "faces", progress=False, drop_invalid=True)
        train_seconds = 0.0
        if generator is None:
            one = stacks["one_sqlite"]
            result, train_seconds = train(one.anonymizer.target, one.tenant)
            generator = (keys.bucket(one.tenant), result.generator)
        bucket, ref = generator
        for s in stacks.values():
            if keys.bucket(s.tenant) != bucket:
                copy_generator(store, bucket, keys.bucket(s.tenant), ref.model.removeprefix("models/"), ref.version)
        header = (folder / "labels.csv").read_text().split("\n", 1)[0].split(",")
        spec = js.ProtectionJobSpec(dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1),
                                    protected_attributes=["gender"],
                                    kept_attributes=["race" if "race" in header else "skin_tone"], preview_size=8,
                                    generator=refs_pb2.ModelRef(model=ref.model, version=ref.version), seed=0)
        print(f"replicas: both stacks up in {started:.0f} s; {uploaded.sample_count} faces each", flush=True)
        previews = previews_per_minute(stacks, spec, settings)
        import sqlalchemy

        engine = sqlalchemy.create_engine(database)
        try:
            taken = takeover(stacks["two_pg"], engine, spec, settings["kill_at"] if carry_on else settings[
                "kill_at"][:1], carry_on, scratch)
        finally:
            engine.dispose()
        for s in stacks.values():
            for c in s.coordinators:
                c.read_peak()
    # the ExitStack stopped every process (reading its VmHWM first) and the PostgreSQL server
    rss = []
    for s in stacks.values():
        for c in [*s.retired, *s.coordinators]:
            killed = c in s.retired or c.proc.returncode == -signal.SIGKILL
            ran = "previews" + (", SIGKILLed driving the takeover's job" if killed else "")
            if c.pid == taken["finished_by"]:
                ran = f"previews, then the takeover's job to its {'report' if taken['ran_to_its_report'] else 'end'}"
            rss.append({"stack": s.name, "pid": c.pid, "peak_rss_mb": c.peak_rss_mb, "ran": ran})
    # over a whole job: the replica that carried the takeover's job to its report (else the largest of all)
    whole = [r["peak_rss_mb"] for r in rss if r["pid"] == taken["finished_by"] and taken["ran_to_its_report"]]
    headline = max(k["lease_taken_s"] for k in taken["kills"])
    goal = LEASE_SECONDS + TAKEOVER_SLACK
    return {
        "lease_seconds": LEASE_SECONDS, "faces": uploaded.sample_count, "database": "postgresql (pg.sh, own cluster)",
        "coordinator_omp_threads": threads or f"unset (torch: one per core, {os.cpu_count()})",
        "anonymizers": "one per stack, the same settings (each stack's ledger is its own)",
        "previews_per_minute": previews,
        "previews_per_minute_two_pg_vs_one_sqlite": previews["ratio"],
        "takeover": taken, "takeover_seconds": headline,
        "coordinator_rss": rss,
        "coordinator_peak_rss_mb": whole[0] if whole else max(r["peak_rss_mb"] or 0.0 for r in rss),
        "coordinator_peak_rss_mb_any": max(r["peak_rss_mb"] or 0.0 for r in rss),
        "generator_train_seconds": round(train_seconds, 1),
        "seconds": round(time.perf_counter() - began, 1),
        "targets": {
            "takeover_seconds_at_most_lease_plus_5": {"value": headline, "target": f"<= {goal:g}",
                                                      "met": headline <= goal},
            "previews_per_minute_two_pg_vs_one_sqlite_at_least_0.9": {
                "value": previews["ratio"], "target": f">= {TARGETS['previews_ratio']}",
                "met": previews["ratio"] >= TARGETS["previews_ratio"]},
        },
    }


def plot(replicas: dict, path: Path, whole_job_rss: list[dict] | None = None) -> None:
    """Previews per minute by phase; the takeover timeline; each coordinator's peak RSS against the goal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.5))
    phases = replicas["previews_per_minute"]["phases"]
    colours = {"one_sqlite": "tab:blue", "two_pg": "tab:orange"}
    left.bar(range(len(phases)), [p["previews_per_minute"] for p in phases],
             color=[colours[p["stack"]] for p in phases])
    for name, colour in colours.items():
        left.axhline(replicas["previews_per_minute"][name], color=colour, linestyle="--", linewidth=1,
                     label=f"{name.replace('_', ' ')}: {replicas['previews_per_minute'][name]:.2f}/min")
    left.set(xlabel="phase (in the order run)", ylabel="previews per minute",
             title=f"Previews per minute: 2 on PostgreSQL / 1 on SQLite\n= "
                   f"{replicas['previews_per_minute']['ratio']:.2f}x")
    left.legend(fontsize=8)
    kills = replicas["takeover"]["kills"]
    names = [k["stage"] for k in kills]
    middle.barh(names, [k["lease_taken_s"] for k in kills], label="SIGKILL -> lease held by the other replica")
    middle.barh(names, [k["moved_on_s"] - k["lease_taken_s"] for k in kills], left=[k["lease_taken_s"] for k in kills],
                label="-> the job moved on there")
    middle.axvline(LEASE_SECONDS + TAKEOVER_SLACK, color="red", linestyle="--", linewidth=1,
                   label=f"goal: lease ({LEASE_SECONDS:g} s) + {TAKEOVER_SLACK:g} s")
    middle.set(xlabel="seconds after the SIGKILL", title="Takeover of a job whose driver was killed")
    middle.legend(fontsize=8, loc="lower right")
    rows = [(f"{r['stack']} {r['pid']}:\n{r['ran']}", r["peak_rss_mb"] or 0.0) for r in replicas["coordinator_rss"]]
    rows += [(f"sqlite {r['pid']}:\n{r['ran']}", r["peak_rss_mb"] or 0.0) for r in whole_job_rss or []]
    right.barh([r[0] for r in rows], [r[1] for r in rows])
    right.axvline(TARGETS["coordinator_peak_rss_mb"], color="red", linestyle="--", linewidth=1, label="goal: 300 MB")
    right.set(xlabel="peak RSS (VmHWM), MB", title="Coordinator processes")
    right.tick_params(axis="y", labelsize=7)
    right.legend(fontsize=8)
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
