import threading

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
