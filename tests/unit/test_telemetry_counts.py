"""What Umbra's own metrics count (umbra.runtime.metrics), read from prometheus_client's registry after real work:
operations by kind and state, their stages' durations, the images their progress reported, the ledger's refusals
and committed ε (once per charge, never for a retry); and the operation's span, child of the caller's, with an
event per stage (umbra.runtime.tracing, spans kept in memory)."""

from __future__ import annotations

import threading
import uuid

import pytest
from google.protobuf import duration_pb2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from umbra.privacy.ledger import PrivacyLedger
from umbra.privacy.mechanisms import Cost
from umbra.runtime import tracing
from umbra.runtime.errors import BudgetExhausted, InvalidInput
from umbra.runtime.operations import OperationRunner, OperationStore
from umbra.runtime.operations.runner import _stage_label
from umbra.services.coordinator.db import CoordinatorDB, TenantRow
from umbra.training.v1 import training_service_pb2


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    tracing.add_exporter(exporter)
    yield exporter
    exporter.shutdown()


def test_operations_are_counted_by_kind_and_state_with_their_stages_and_images(tmp_path, spans):
    kind = f"Count{uuid.uuid4().hex[:8]}"  # a kind of its own: the registry is the process's
    runner = OperationRunner(OperationStore(tmp_path / "ops.sqlite3"), service="test")
    inside = threading.Event()
    go_on = threading.Event()

    def work(ctx):
        ctx.report(stage="anonymizing", done=0, total=100, unit="images")
        ctx.report(done=40)
        inside.set()
        go_on.wait(5)
        ctx.report(done=100)
        ctx.report(stage="writing models/secret-name/versions/3")
        return duration_pb2.Duration(seconds=1)

    def failing(ctx):
        raise InvalidInput("spec.thing", "is wrong")

    with tracing.tracer("test").start_as_current_span("the caller") as caller:
        op = runner.start(kind=kind, tenant="acme", metadata=training_service_pb2.EvaluateMetadata(), work=work)
    assert inside.wait(5)
    assert sample("umbra_operations_running", service="test", kind=kind) == 1
    go_on.set()
    assert runner.wait(op.name, "acme", 5).done
    failed = runner.start(kind=kind, tenant="acme", metadata=training_service_pb2.EvaluateMetadata(), work=failing)
    assert runner.wait(failed.name, "acme", 5).done
    runner.shutdown(1)

    assert sample("umbra_operations_running", service="test", kind=kind) == 0
    assert sample("umbra_operations_total", service="test", kind=kind, state="done") == 1
    assert sample("umbra_operations_total", service="test", kind=kind, state="failed") == 1
    assert sample("umbra_images_processed_total", service="test", kind=kind) == 100
    stages = {"queued", "running", "anonymizing", "writing"}  # names and figures are never label values
    for stage in stages:
        assert sample("umbra_stage_seconds_count", service="test", kind=kind, stage=stage) >= 1, stage
    assert sample("umbra_stage_seconds_count", service="test", kind=kind, stage="writing models/secret-name") == 0

    ours = [s for s in spans.get_finished_spans() if s.attributes.get("umbra.operation") == op.name]
    assert len(ours) == 1
    span = ours[0]
    assert span.name == f"operation {kind}" and span.parent.span_id == caller.get_span_context().span_id
    assert span.attributes["umbra.state"] == "done" and span.status.is_ok
    assert [e.attributes["stage"] for e in span.events][:2] == ["running", "anonymizing"]
    bad = next(s for s in spans.get_finished_spans() if s.attributes.get("umbra.operation") == failed.name)
    assert bad.attributes["umbra.state"] == "failed" and not bad.status.is_ok


def test_stage_labels_keep_words_and_drop_figures_and_names():
    assert _stage_label("round 3: previewing at intensity 0.750") == "round previewing at intensity"
    assert _stage_label("updating models/smile/versions/2 by unlearning") == "updating by unlearning"
    assert _stage_label("42") == "other"


def test_the_ledger_counts_refusals_and_committed_epsilon_once(tmp_path):
    tenant = f"t{uuid.uuid4().hex[:8]}"
    db = CoordinatorDB(tmp_path / "coordinator.sqlite3")
    db.insert_tenant(TenantRow(tenant, "T", "ACTIVE", 2.0, 1e-5, 0.0))
    ledger = PrivacyLedger(db.transaction)
    cost = Cost(1.5, 0.0, "randomized_response", "attribute", {"k": 2}, accountant="analytic")
    try:
        ledger.reserve(tenant, "faces", cost, request_id="r1", spent_by="op")
        ledger.commit(tenant, "r1")
        ledger.commit(tenant, "r1")  # a retry: charged once
        assert sample("umbra_privacy_epsilon_charged_total", tenant=tenant) == 1.5
        with pytest.raises(BudgetExhausted):
            ledger.reserve(tenant, "faces", cost, request_id="r2", spent_by="op")
        assert sample("umbra_privacy_refusals_total", tenant=tenant) == 1
        ledger.reserve(tenant, "faces", Cost(0.25, 0.0, "randomized_response", "attribute", {"k": 2},
                                             accountant="analytic"), request_id="r3", spent_by="op")
        ledger.release(tenant, "r3")  # released: nothing charged
        assert sample("umbra_privacy_epsilon_charged_total", tenant=tenant) == 1.5
    finally:
        db.close()
