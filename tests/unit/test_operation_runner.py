import threading
import time

import pytest
from google.protobuf import duration_pb2

from umbra.runtime.errors import FailedPrecondition, InvalidInput
from umbra.runtime.operations import OperationRunner, OperationStore
from umbra.training.v1 import training_service_pb2


def test_request_id_returns_the_first_operation(tmp_path):
    runner = OperationRunner(OperationStore(tmp_path / "ops.sqlite3"), service="test")
    release = threading.Event()

    def work(ctx):
        release.wait(5)
        return duration_pb2.Duration(seconds=1)

    first = runner.start(kind="K", tenant="acme", metadata=training_service_pb2.EvaluateMetadata(), work=work,
                         request_id="r-1")
    again = runner.start(kind="K", tenant="acme", metadata=training_service_pb2.EvaluateMetadata(), work=work,
                         request_id="r-1")
    other_tenant = runner.start(kind="K", tenant="globex", metadata=training_service_pb2.EvaluateMetadata(),
                                work=work, request_id="r-1")
    assert again.name == first.name and other_tenant.name != first.name
    release.set()
    assert runner.wait(first.name, "acme", 5).done
    runner.shutdown(1)
    with pytest.raises(FailedPrecondition):
        runner.start(kind="K", tenant="acme", metadata=training_service_pb2.EvaluateMetadata(), work=work)


def test_a_retry_of_an_interrupted_request_starts_it_again(tmp_path):
    """Issue 15, class 4: after a crash, the same request_id got the interrupted operation back (ABORTED) forever,
    so the documented upload could never be finished. An interruption is not the request's answer."""
    from umbra.runtime.operations.runner import interrupted

    path = tmp_path / "ops.sqlite3"
    runner = OperationRunner(OperationStore(path), service="test")
    started = threading.Event()

    def stuck(ctx):
        started.set()
        ctx.cancel_event.wait(5)
        ctx.check_cancelled()
        return duration_pb2.Duration(seconds=1)

    first = runner.start(kind="K", tenant="acme", metadata=training_service_pb2.EvaluateMetadata(), work=stuck,
                         request_id="r-1")
    assert started.wait(5)
    runner.shutdown(2)  # the service stops under it: interrupted, not cancelled by the caller
    runner.store.close()
    runner = OperationRunner(OperationStore(path), service="test")
    runner.recover()
    old = runner.get(first.name, "acme").operation
    assert old.done and interrupted(old)
    assert runner.find("acme", "K", "r-1") is None
    again = runner.start(kind="K", tenant="acme", metadata=training_service_pb2.EvaluateMetadata(),
                         work=lambda ctx: duration_pb2.Duration(seconds=2), request_id="r-1")
    assert again.name != first.name and runner.wait(again.name, "acme", 5).HasField("response")
    assert runner.find("acme", "K", "r-1").name == again.name  # and it answers for the request from now on
    runner.shutdown(1)


def test_unexpected_errors_become_a_generic_internal_error(tmp_path):
    runner = OperationRunner(OperationStore(tmp_path / "ops.sqlite3"), service="test")

    def work(ctx):
        raise RuntimeError("database password is hunter2")

    op = runner.start(kind="K", tenant="acme", metadata=training_service_pb2.EvaluateMetadata(), work=work)
    done = runner.wait(op.name, "acme", 5)
    assert done.error.code == 13 and "hunter2" not in done.error.message
    runner.shutdown(0)


@pytest.mark.parametrize("name", ["", "operations/", "operations/XYZ", "ops/" + "0" * 32, "operations/" + "0" * 33])
def test_operation_names_are_validated(tmp_path, name):
    runner = OperationRunner(OperationStore(tmp_path / "ops.sqlite3"), service="test")
    with pytest.raises(InvalidInput, match="name"):
        runner.get(name, "acme")
    runner.shutdown(0)


def _long_running(runner, runs, block=None):
    from umbra.runtime.operations import LongRunning

    def plan(tenant, request):
        if request.model == "models/bad":
            raise InvalidInput("model", "is bad")
        return (tenant, request.model)

    def run(ctx, job):
        runs.append(job)
        if block is not None:
            block.wait(5)
        return duration_pb2.Duration(seconds=len(runs))

    return LongRunning(runner, "Train", training_service_pb2.TrainRequest, training_service_pb2.TrainMetadata,
                       plan=plan, run=run)


def test_long_running_plans_before_any_work_and_resumes_from_the_stored_request(tmp_path):
    first, runs = OperationRunner(OperationStore(tmp_path / "ops.sqlite3"), service="test"), []
    block = threading.Event()
    operation = _long_running(first, runs, block)
    with pytest.raises(InvalidInput, match="model"):
        operation.start("acme", training_service_pb2.TrainRequest(model="models/bad"))
    assert first.store.unfinished() == []  # refused before an operation existed
    op = operation.start("acme", training_service_pb2.TrainRequest(model="models/m", request_id="r"))
    # a second process over the same store (the first one "crashed" mid-run) resumes it from the request
    second, resumed = OperationRunner(OperationStore(tmp_path / "ops.sqlite3"), service="test"), []
    _long_running(second, resumed)
    second.recover()
    assert second.wait(op.name, "acme", 5).done and resumed == [("acme", "models/m")]
    block.set()
    first.shutdown(1)
    second.shutdown(0)


def test_recover_leaves_alone_what_this_process_started_before_it(tmp_path):
    """A service may start operations while it builds (the coordinator carries on jobs a graceful stop
    interrupted), before recover() runs: recover must not run them a second time."""
    runner = OperationRunner(OperationStore(tmp_path / "ops.sqlite3"), service="test")
    runs, release = [], threading.Event()

    def work(ctx):
        runs.append(ctx.name)
        release.wait(5)
        return duration_pb2.Duration(seconds=1)

    runner.register_resumer("K", lambda ctx, request: work(ctx))
    op = runner.start(kind="K", tenant="acme", metadata=training_service_pb2.EvaluateMetadata(), work=work,
                      request_id="r-1", resume_request=training_service_pb2.EvaluateRequest())
    runner.recover()
    release.set()
    assert runner.wait(op.name, "acme", 5).HasField("response")
    assert runs == [op.name]  # once
    runner.shutdown(1)


# -- fair share (issue 26) ----------------------------------------------------------------------------------------


def _metadata():
    return training_service_pb2.EvaluateMetadata()


def _blocking(started: list, gate: threading.Event, let_go: set | None = None):
    """Work that records its start, then holds its slot until `gate` opens, its name is in `let_go`, or it is
    cancelled."""

    def work(ctx):
        started.append(ctx.name)
        while not gate.wait(0.05) and ctx.name not in (let_go or ()):
            ctx.check_cancelled()
        return duration_pb2.Duration(seconds=1)

    return work


def test_another_tenant_starts_while_one_tenant_holds_every_slot_and_queues_more(tmp_path):
    """Issue 26: with a pool of 2, a tenant's 6 long operations kept another tenant's operation queued behind all
    of them. The next free slot goes to the tenant with the fewest running, and a tenant alone uses all slots."""
    runner = OperationRunner(OperationStore(tmp_path / "ops.sqlite3"), service="test", max_workers=2)
    gate, started, let_go = threading.Event(), [], set()
    try:
        ops = [runner.start(kind="K", tenant="acme", metadata=_metadata(), work=_blocking(started, gate, let_go))
               for _ in range(6)]
        deadline = time.monotonic() + 5
        while len(started) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert started == [ops[0].name, ops[1].name]  # alone, acme uses every slot
        other_started, other_done = threading.Event(), threading.Event()

        def other(ctx):
            other_started.set()
            other_done.wait(5)
            return duration_pb2.Duration(seconds=2)

        theirs = runner.start(kind="K", tenant="globex", metadata=_metadata(), work=other)
        let_go.add(ops[0].name)  # one of acme's running operations ends: the free slot is globex's
        assert other_started.wait(5), "globex's operation waited behind acme's queue"
        time.sleep(0.2)
        assert len(started) == 2  # acme's queued ones did not take the slot (nor jump past the pool's size)
        other_done.set()
        assert runner.wait(theirs.name, "globex", 5).HasField("response")
    finally:
        gate.set()
        for op in ops:
            assert runner.wait(op.name, "acme", 10).done
        runner.shutdown(1)


def test_slots_go_round_robin_to_the_tenants_with_queued_work(tmp_path):
    runner = OperationRunner(OperationStore(tmp_path / "ops.sqlite3"), service="test", max_workers=1)
    gate, order = threading.Event(), []

    def work(label):
        def run(ctx):
            order.append(label)
            if label == "a1":
                gate.wait(5)
            return duration_pb2.Duration(seconds=1)
        return run

    first = runner.start(kind="K", tenant="acme", metadata=_metadata(), work=work("a1"))
    deadline = time.monotonic() + 5
    while not order and time.monotonic() < deadline:
        time.sleep(0.02)
    ops = [(t, runner.start(kind="K", tenant=t, metadata=_metadata(), work=work(label)))
           for t, label in [("acme", "a2"), ("acme", "a3"), ("globex", "b1"), ("globex", "b2")]]
    gate.set()
    for tenant, op in [("acme", first), *ops]:
        assert runner.wait(op.name, tenant, 5).HasField("response")
    assert order == ["a1", "b1", "a2", "b2", "a3"]
    runner.shutdown(1)


def test_cancelling_a_queued_operation_ends_it_at_once_and_it_never_runs(tmp_path):
    """Issue 26: a cancelled operation kept its place in the queue; it ended only once it got a thread."""
    from google.rpc import code_pb2

    from umbra.client.operations import progress_of

    runner = OperationRunner(OperationStore(tmp_path / "ops.sqlite3"), service="test", max_workers=2)
    gate, started = threading.Event(), []
    ops = [runner.start(kind="K", tenant="acme", metadata=_metadata(), work=_blocking(started, gate))
           for _ in range(4)]
    try:
        runner.cancel(ops[3].name, "acme")
        op = runner.get(ops[3].name, "acme").operation  # at once: no waiting for a slot
        assert op.done and op.error.code == code_pb2.CANCELLED and progress_of(op).stage == "cancelled"
        assert runner.get(ops[2].name, "acme").operation.done is False  # the others keep their place
    finally:
        gate.set()
        for other in ops:
            assert runner.wait(other.name, "acme", 10).done
        runner.shutdown(1)
    assert ops[3].name not in started and len(started) == 3
    assert runner.get(ops[3].name, "acme").operation.error.code == code_pb2.CANCELLED  # and it stays so


def test_an_operation_waiting_for_an_outside_event_gives_its_slot_to_queued_work(tmp_path):
    """Issue 26: a job waiting for the tenant's feedback kept its slot. Inside `ctx.waiting()` it does not; on
    leaving, it takes a slot again like queued work (here: once another tenant's operation frees one)."""
    runner = OperationRunner(OperationStore(tmp_path / "ops.sqlite3"), service="test", max_workers=2)
    feedback, inside, resumed = threading.Event(), [], []

    def awaiting(ctx):
        with ctx.waiting():
            inside.append(ctx.name)
            feedback.wait(10)
        resumed.append(ctx.name)
        return duration_pb2.Duration(seconds=1)

    gate, started = threading.Event(), []
    try:
        waiters = [runner.start(kind="K", tenant="acme", metadata=_metadata(), work=awaiting) for _ in range(2)]
        deadline = time.monotonic() + 5
        while len(inside) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(inside) == 2, "the operations never got inside ctx.waiting()"
        others = [runner.start(kind="K", tenant="globex", metadata=_metadata(), work=_blocking(started, gate))
                  for _ in range(2)]
        deadline = time.monotonic() + 5
        while len(started) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(started) == 2, "globex's operations waited for slots that only waiting operations held"
        feedback.set()  # the answer comes: acme's operations want a slot again, and both are globex's now
        time.sleep(0.5)
        assert resumed == []
        gate.set()
        for op in waiters:
            assert runner.wait(op.name, "acme", 10).HasField("response")
        for op in others:
            assert runner.wait(op.name, "globex", 10).HasField("response")
    finally:
        feedback.set()
        gate.set()
        runner.shutdown(1)


def test_a_cancelled_waiting_operation_ends_without_queueing_for_a_slot(tmp_path):
    runner = OperationRunner(OperationStore(tmp_path / "ops.sqlite3"), service="test", max_workers=1)
    inside = threading.Event()

    def awaiting(ctx):
        with ctx.waiting():
            inside.set()
            ctx.cancel_event.wait(10)
        ctx.check_cancelled()
        return duration_pb2.Duration(seconds=1)

    gate, started = threading.Event(), []
    try:
        waiter = runner.start(kind="K", tenant="acme", metadata=_metadata(), work=awaiting)
        assert inside.wait(5)
        holder = runner.start(kind="K", tenant="globex", metadata=_metadata(), work=_blocking(started, gate))
        deadline = time.monotonic() + 5
        while not started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert started == [holder.name]  # the only slot is globex's
        runner.cancel(waiter.name, "acme")
        assert runner.wait(waiter.name, "acme", 5).error.code == 1  # CANCELLED, with no slot free
    finally:
        gate.set()
        runner.shutdown(1)


def test_shutdown_does_not_wait_for_queued_work(tmp_path):
    runner = OperationRunner(OperationStore(tmp_path / "ops.sqlite3"), service="test", max_workers=1)
    gate, started = threading.Event(), []
    ops = [runner.start(kind="K", tenant="acme", metadata=_metadata(), work=_blocking(started, gate))
           for _ in range(5)]
    begun = time.monotonic()
    runner.shutdown(5)
    assert time.monotonic() - begun < 3
    from umbra.runtime.operations.runner import interrupted
    assert all(interrupted(runner.get(op.name, "acme").operation) for op in ops)
    assert len(started) <= 1
    gate.set()
