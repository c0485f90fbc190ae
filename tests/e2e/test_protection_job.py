"""Umbra's main job end to end, through real gRPC and a real S3 server: a tenant uploads a small synthetic face
dataset, the anonymizer trains a DP generator on it and the training service a classifier of smile, the tenant
runs a protection job (which reuses that generator and updates that classifier to the anonymized version by
feature unlearning, verified against retraining) with a scripted reviewer (three rounds: more, less, accept), gets
the anonymized version committed, the classifier's new version and the report (JSON and HTML with the images
embedded, the release's re-identification and adversary figures, the unlearning and its verification), and
publishes both the classifier and its unlearned version on Triton through the coordinator's ModelService, which
then answers queries with each model's own logits.

The coordinator, the anonymizer, the training and the unlearning service run in this process on the S3 store;
Triton (`python -m umbra.inference.triton --store`) watches the same S3 store.

The job is traced (umbra.runtime.tracing, spans kept in memory): one trace follows it from the coordinator's
CreateProtectionJob call through its operation, the workers' calls and operations, their S3 requests and the
ledger calls back to the coordinator; the publication's trace reaches the inference server."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY

from e2e.jobkit import SCRIPT, Tenant, review, train_classifier
from support import free_port, start_service
from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
from umbra.anonymizer.v1 import anonymizer_service_pb2_grpc
from umbra.classifiers.architectures import create
from umbra.classifiers.registry import ModelRegistry
from umbra.client import inference
from umbra.client.operations import OperationsClient
from umbra.common.v1 import privacy_pb2, refs_pb2
from umbra.coordinator.v1 import dataset_service_pb2 as cds
from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.coordinator.v1 import model_service_pb2 as ms
from umbra.coordinator.v1 import model_service_pb2_grpc
from umbra.dataset.images import decode_rgb
from umbra.runtime import tracing
from umbra.storage.datasets import DatasetReader

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
FACES = 120  # the test split must hold two faces of each gender (the verification's probe)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def spans():
    """Every span this process makes while the module runs (its services are in this process)."""
    exporter = InMemorySpanExporter()
    tracing.add_exporter(exporter)
    tracing.instrument()
    yield exporter
    exporter.shutdown()  # keeps nothing more
    tracing.uninstrument()


@pytest.fixture(scope="module")
def system(tmp_path_factory, s3_server, spans):
    home = tmp_path_factory.mktemp("e2e")  # short: PyTriton's unix sockets live in the workspace
    tenant = f"e2e-{uuid.uuid4().hex[:8]}"  # the S3 server outlives the test: a bucket of its own
    s3 = dict(UMBRA_STORE="s3", UMBRA_S3_ENDPOINT=s3_server.endpoint,
              UMBRA_S3_ACCESS_KEY=s3_server.access_key, UMBRA_S3_SECRET_KEY=s3_server.secret_key)
    triton_port, anonymizer_port, unlearning_port = free_port(), free_port(), free_port()
    log = open(home / "triton.log", "wb")
    triton = subprocess.Popen(
        [sys.executable, "-m", "umbra.inference.triton", "--store", "--grpc-port", str(triton_port),
         "--poll-seconds", "0.5", "--workspace", str(home / "ws")],
        env=dict(os.environ, UMBRA_HOME=str(home), **s3), stdout=log, stderr=subprocess.STDOUT)
    served = []
    try:
        coordinator = start_service("coordinator", home, tenant, budget=(1e6, 0.5),
                                    UMBRA_ANONYMIZER_URLS=f"127.0.0.1:{anonymizer_port}",
                                    UMBRA_INFERENCE_URL=f"127.0.0.1:{triton_port}",
                                    UMBRA_UNLEARNING_URL=f"127.0.0.1:{unlearning_port}", **s3)
        served.append(coordinator)
        served.append(start_service("anonymizer", home, tenant, coordinator=coordinator,
                                    UMBRA_ANONYMIZER_PORT=str(anonymizer_port), **s3))
        served.append(start_service("training", home, tenant, coordinator=coordinator, **s3))
        served.append(start_service("unlearning", home, tenant, coordinator=coordinator,  # retrains to verify
                                    UMBRA_UNLEARNING_PORT=str(unlearning_port), UMBRA_TRAINING_URL=served[2].target,
                                    **s3))
        yield (Tenant(coordinator.target, tenant, coordinator.credential), *served[1:3], s3_server.store(),
               f"127.0.0.1:{triton_port}", home)
    finally:
        for s in served:
            s.running.stop(grace=0)
        triton.terminate()
        triton.wait(timeout=60)
        log.close()


def train_generator(anonymizer) -> refs_pb2.ModelRef:
    stub = anonymizer_service_pb2_grpc.AnonymizerServiceStub(anonymizer.channel())
    op = stub.TrainGenerator(an.TrainGeneratorRequest(
        dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1), condition_attributes=["gender", "smile"],
        model="models/faces-gen", image_size=32, epochs=1, batch_size=8, learning_rate=2e-3, seed=1,
        privacy=an.GeneratorPrivacy(target_epsilon=8.0, target_delta=1e-3, max_grad_norm=1.0, noise_multiplicity=1),
        request_id=str(uuid.uuid4())), timeout=60).operation
    made = OperationsClient(anonymizer.channel()).result(op.name, an.GeneratorResult, poll_seconds=0.5, timeout=900)
    assert made.generator.model == "models/faces-gen" and made.privacy_cost.epsilon <= 8.0
    return made.generator


class Images(HTMLParser):
    """The <img> sources of an HTML page."""

    def __init__(self):
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs).get("src", ""))


def as_array(data: list[bytes]) -> np.ndarray:
    """PNGs as float images in [0, 1], (N, 3, H, W): what the served classifiers take."""
    return np.stack([decode_rgb(d) for d in data]).transpose(0, 3, 1, 2).astype(np.float32) / 255.0


def publish_and_query(tenant: Tenant, store, url: str, publication: str, model: refs_pb2.ModelRef,
                      images: np.ndarray) -> np.ndarray:
    """Publishes `model` through the coordinator's ModelService, queries it on Triton, and checks the answers are
    the registry's model's own logits; returns them."""
    stub = model_service_pb2_grpc.ModelServiceStub(tenant.channel())
    op = stub.PublishModel(ms.PublishModelRequest(publication_id=publication, model=model,
                                                  request_id=str(uuid.uuid4())), timeout=60).operation
    published = tenant.operations.result(op.name, ms.Publication, poll_seconds=0.5, timeout=300)
    assert published.state == ms.Publication.STATE_SERVING and published.endpoint == url
    assert published.model == model
    registry = ModelRegistry(store)
    name, version = model.model.removeprefix("models/"), model.version
    net = create(registry.get(f"umbra-{tenant.name}", name, version).config).eval()
    net.load_state_dict(registry.weights(f"umbra-{tenant.name}", name, version))
    with torch.inference_mode():
        expected = net(torch.from_numpy(images)).numpy()
    logits = inference.predict(url, published.served_model_name, images)
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    return logits


def descends(span, ancestor, by_id: dict) -> bool:
    """Whether `ancestor` is `span`'s parent, or its parent's, and so on (within one trace)."""
    while span.parent is not None:
        if span.parent.span_id == ancestor.context.span_id:
            return True
        span = by_id.get(span.parent.span_id)
        if span is None:
            return False
    return False


def render(trace: list, root) -> str:
    """The trace as an indented tree under `root` (one line per span: service, kind, name, duration), with spans
    of one name under one parent folded into one line with their count; then any span not under `root`."""
    children: dict[int, list] = {}
    for span in trace:
        if span.parent is not None:
            children.setdefault(span.parent.span_id, []).append(span)
    lines: list[str] = []

    def walk(span, depth: int, count: int = 1) -> None:
        seconds = (span.end_time - span.start_time) / 1e9
        service = span.attributes.get("umbra.service") or ("s3" if span.kind == SpanKind.CLIENT and span.name in (
            "GET", "PUT", "POST", "HEAD", "DELETE") else "")
        lines.append(f"{'  ' * depth}{span.name}  [{service or '-'} {span.kind.name.lower()}]  {seconds:.3f} s"
                     + (f"  ×{count}" if count > 1 else ""))
        groups: dict[str, list] = {}
        for child in sorted(children.get(span.context.span_id, []), key=lambda c: c.start_time):
            groups.setdefault(child.name, []).append(child)
        for same in groups.values():
            walk(same[0], depth + 1, len(same))

    walk(root, 0)
    shown = {root.context.span_id}
    stack = [root]
    while stack:
        for child in children.get(stack.pop().context.span_id, []):
            shown.add(child.context.span_id)
            stack.append(child)
    orphans = [s for s in trace if s.context.span_id not in shown]
    lines += [f"not under the root: {s.name} (parent {s.parent.span_id if s.parent else None})" for s in orphans]
    return "\n".join(lines)


def check_job_trace(spans: InMemorySpanExporter, operation: str) -> None:
    """The job's trace: the coordinator's call, its operation, and below it every worker's calls and operations
    (each server span the child of the coordinator's client span whose metadata carried the context), their S3
    requests, and the ledger calls back to the coordinator."""
    finished = spans.get_finished_spans()
    job = next(s for s in finished if s.attributes.get("umbra.operation") == operation)
    created = next(s for s in finished if s.context.span_id == job.parent.span_id)
    assert created.name == "/umbra.coordinator.v1.JobService/CreateProtectionJob"
    assert created.kind == SpanKind.SERVER and created.attributes["umbra.service"] == "coordinator"
    trace = [s for s in finished if s.context.trace_id == job.context.trace_id]
    by_id = {s.context.span_id: s for s in trace}
    # the trace starts at the caller: here the test's own client span (this process is instrumented too)
    root = by_id.get(created.parent.span_id) if created.parent is not None else created
    assert root.parent is None and root.name == created.name
    tree = render(trace, root)
    print(tree)  # the trace docs/operations.md shows
    assert all(s in (root, created) or descends(s, created, by_id) for s in trace), tree
    servers = [s for s in trace if s.kind == SpanKind.SERVER]
    services = {s.attributes["umbra.service"] for s in servers}
    assert {"coordinator", "anonymizer", "unlearning", "training"} <= services, services
    for server in servers:  # each call's server span is the child of its caller's client span
        assert by_id[server.parent.span_id].kind == SpanKind.CLIENT
        assert by_id[server.parent.span_id].name == server.name
    anonymizing = next(s for s in servers if s.name.endswith("/AnonymizeDataset"))
    assert descends(anonymizing, job, by_id)
    worker_operations = [s for s in trace if s.name.startswith("operation ") and s is not job]
    assert {s.attributes["umbra.service"] for s in worker_operations} >= {"anonymizer", "unlearning", "training"}
    s3 = [s for s in trace
          if s.kind == SpanKind.CLIENT and ("http.request.method" in s.attributes or "http.method" in s.attributes)]
    assert any(descends(s, anonymizing, by_id) for s in s3), "the anonymizer's S3 requests are in the job's trace"
    ledger = [s for s in servers if "LedgerService" in s.name]
    assert any(descends(s, anonymizing, by_id) for s in ledger), "the anonymizer's charge, back at the coordinator"


def test_upload_protect_report_and_publish(system, spans, tmp_path):
    tenant, anonymizer, training, store, url, _ = system
    uploaded = tenant.upload(tmp_path / "faces", FACES)
    assert uploaded.state == cds.DatasetVersion.STATE_COMMITTED and uploaded.sample_count == FACES
    generator = train_generator(anonymizer)
    classifier = train_classifier(training.target, tenant.name, task="smile", model="models/smile")

    # no generator named: the job reuses the tenant's DP generator trained on the dataset (gender, smile); it
    # updates the smile classifier (smile is kept) and verifies the update, its probe predicting gender
    answers = {a: REGISTRY.get_sample_value("umbra_job_answers_total", {"answer": a}) or 0
               for a in ("more", "less", "accept")}
    operation = tenant.create_job("protect-faces", generator=None, kept_attributes=["smile"], model=classifier,
                                  verify_unlearning=True)
    previews = review(tenant, "protect-faces")  # more, less, accept
    done = tenant.result(operation, timeout=900)
    assert done.state == js.ProtectionJob.STATE_SUCCEEDED, tenant.job("protect-faces")
    assert done.accepted_intensity == 0.625
    assert done.anonymized_dataset == refs_pb2.DatasetRef(dataset="datasets/faces", version=2)
    assert done.unlearned_model == refs_pb2.ModelRef(model=classifier.model, version=classifier.version + 1)
    rounds = tenant.rounds("protect-faces")
    assert [r.intensity for r in rounds] == [0.5, 0.75, 0.625]
    for answer, before in answers.items():  # the coordinator's metrics (this process's registry)
        assert REGISTRY.get_sample_value("umbra_job_answers_total", {"answer": answer}) == before + 1
    for shown in previews.values():
        assert len(shown.pairs) == 3 and shown.round.privacy_cost.epsilon > 0
        assert all(p.anonymized.data.startswith(PNG) and p.anonymized.data != p.original.data for p in shown.pairs)
        risk = shown.round.risk
        assert 0 <= risk["reid_rank1"] <= 1 and 0 <= risk["gender_classifier_agreement"] <= 1
        assert risk["gender_classifier_chance"] == pytest.approx(0.5)  # two values of gender

    # the anonymized version: committed, every face, anonymized (not the uploaded bytes)
    versions = tenant.versions()
    assert [(v.state, v.origin) for v in versions] == [
        (cds.DatasetVersion.STATE_COMMITTED, cds.DatasetVersion.ORIGIN_UPLOAD),
        (cds.DatasetVersion.STATE_COMMITTED, cds.DatasetVersion.ORIGIN_ANONYMIZED)]
    bucket = f"umbra-{tenant.name}"
    original = {s.key: d for s, d in DatasetReader(store, bucket, "faces", 1).iter_images()}
    anonymized = {s.key: d for s, d in DatasetReader(store, bucket, "faces", 2).iter_images()}
    assert sorted(anonymized) == sorted(original) and all(anonymized[k] != original[k] for k in original)

    # every preview and the dataset charged once, committed
    entries = tenant.ledger()
    assert not [e for e in entries if e.state == privacy_pb2.PRIVACY_CHARGE_STATE_RESERVED]
    spent = sorted(e.spent_by for e in entries if e.state == privacy_pb2.PRIVACY_CHARGE_STATE_COMMITTED)
    assert spent.count("Anonymize") == len(SCRIPT) and spent.count("AnonymizeDataset") == 1
    assert spent.count("TrainGenerator") == 1  # ours: the job reused it

    report = tenant.jobs.GetReport(js.GetReportRequest(job="jobs/protect-faces"), timeout=60)
    content = json.loads(report.json_content)
    assert [r["intensity"] for r in content["rounds"]] == [0.5, 0.75, 0.625]
    assert report.privacy_total.epsilon == pytest.approx(content["privacy"]["total"]["epsilon"])
    assert report.metrics["rounds"] == len(SCRIPT)
    assert content["generator"]["model"] == generator.model and not content["generator"]["trained_by_job"]
    # the release measured: re-identification of the test faces, an adversary retrained for gender, smile's utility
    metrics = report.metrics
    assert 0 <= metrics["reid_rank1"] <= 1 and 0 <= metrics["reid_verify_rate"] <= 1 and metrics["reid_faces"] > 0
    assert 0 <= metrics["adversary_gender_bacc"] <= 1
    assert any(k.startswith("kept_smile_") for k in metrics), sorted(metrics)
    # the classifier updated by unlearning, verified against one retrained on the anonymized version
    unlearning = content["unlearning"]
    assert (unlearning["model"], unlearning["version"]) == (done.unlearned_model.model, done.unlearned_model.version)
    assert unlearning["changed_samples"] > 0 and unlearning["update_norm"] > 0
    verification = unlearning["verification"]
    assert verification["probe_attribute"] == "gender" and verification["test_count"] > 0
    for name in ("accuracy_original", "accuracy_unlearned", "accuracy_retrained", "agreement_with_retrained"):
        assert 0 <= verification[name] <= 1 and metrics[f"unlearning_{name}"] == pytest.approx(verification[name])
    assert verification["retrained"].startswith("models/")
    page = Images()
    page.feed(report.html_content.decode())
    assert page.sources and all(s.startswith("data:image/png;base64,") for s in page.sources)
    assert all(base64.b64decode(s.split(",", 1)[1]).startswith(PNG) for s in page.sources)
    assert store.get(bucket, report.report_html.key) == report.html_content

    check_job_trace(spans, operation)

    test_images = as_array([anonymized[k] for k in sorted(anonymized)[:8]])
    publish_and_query(tenant, store, url, "smile-original", classifier, test_images)
    # the publication's trace: the coordinator's call, its operation, and its calls to the inference server
    published = next(s for s in spans.get_finished_spans() if s.name.endswith("ModelService/PublishModel"))
    assert [s for s in spans.get_finished_spans() if s.context.trace_id == published.context.trace_id
            and s.kind == SpanKind.CLIENT and s.name.startswith("/inference.GRPCInferenceService/")]
    publish_and_query(tenant, store, url, "smile-unlearned", done.unlearned_model, test_images)
