"""The anonymizer's MeasureRisk and EvaluateRelease over real gRPC, on synthetic faces written into its object store:
released images that are their own originals are re-identified every time, and a release that shows other people is
not (rank 1); the attribute figures are in range; bad input is refused by field before any work, a repeated
request_id returns the same operation, and only the service credential may call (a tenant's API key may not)."""

from __future__ import annotations

import grpc
import pytest

from support import SERVICE_TOKEN, commit_faces, commit_samples, start_service, status_details, with_fields
from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
from umbra.anonymizer.v1 import anonymizer_service_pb2_grpc
from umbra.client.channel import open_channel
from umbra.client.operations import OperationsClient
from umbra.common.v1 import image_pb2, refs_pb2
from umbra.storage.local import LocalObjectStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
FACES = 48  # every 4th is a test face: 12
DATASET = refs_pb2.DatasetRef(dataset="datasets/faces", version=1)


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    coordinator = start_service("coordinator", home)
    anonymizer = start_service("anonymizer", home, coordinator=coordinator)
    store = LocalObjectStore(home / "objects")
    store.ensure_bucket("umbra-acme")
    reader = commit_faces(store, "umbra-acme", FACES, size=32, seed=3)
    rows = {s.key: (s.key, s.split, s.labels, data) for s, data in reader.iter_images()}
    commit_samples(store, "umbra-acme", "faces", 2, list(rows.values()), size=32)  # "released" as they were
    store.ensure_bucket("umbra-other")
    test = sorted(k for k, row in rows.items() if row[1] == "test")
    yield coordinator, anonymizer, {k: row[3] for k, row in rows.items()}, test
    anonymizer.running.stop(grace=0)
    coordinator.running.stop(grace=0)


def stubs(anonymizer, tenant: str = "acme"):
    channel = open_channel(anonymizer.target, SERVICE_TOKEN, tenant=tenant)
    return anonymizer_service_pb2_grpc.AnonymizerServiceStub(channel), OperationsClient(channel)


def png(data: bytes, key: str = "") -> image_pb2.Image:
    return image_pb2.Image(data=data, media_type="image/png", width=32, height=32, sample_key=key)


def risk_request(images: dict[str, bytes], test: list[str], shown: list[str] | None = None,
                 **overrides) -> an.MeasureRiskRequest:
    """A preview of the first 4 test faces; `shown`: the faces its released images really show (their own)."""
    keys = test[:4]
    shown = shown or keys
    return with_fields(an.MeasureRiskRequest(
        dataset=DATASET, sample_keys=keys, gallery_sample_keys=test,
        released_images=[png(images[s], k) for k, s in zip(keys, shown, strict=True)],
        protected_attributes=["gender", "age"], seed=7), **overrides)


def evaluation_request(test: list[str], **overrides) -> an.EvaluateReleaseRequest:
    return with_fields(an.EvaluateReleaseRequest(dataset=DATASET, anonymized_version=2, sample_keys=test,
                                                 protected_attributes=["gender"], kept_attributes=["smile", "age"],
                                                 seed=7), **overrides)


def test_risk_of_a_preview(services):
    _, anonymizer, images, test = services
    stub, operations = stubs(anonymizer)
    request_id = "7c0c5d0e-0000-4000-8000-000000000001"
    first = stub.MeasureRisk(risk_request(images, test, request_id=request_id), timeout=60).operation
    risk = dict(operations.result(first.name, an.RiskResult, poll_seconds=0.5, timeout=300).metrics)
    assert risk["reid_rank1"] == 1.0 and risk["reid_verify_rate"] == 1.0  # the originals themselves
    assert risk["reid_gallery"] == len(test)
    assert 0 <= risk["gender_classifier_agreement"] <= 1 and risk["gender_classifier_chance"] == 0.5
    assert set(risk) == {"reid_rank1", "reid_verify_rate", "reid_gallery", "gender_classifier_agreement",
                         "gender_classifier_chance"}  # age is a number: no classifier judges it
    # kept attributes: judged on the released faces and on their originals; released = originals gives ratio 1
    op = stub.MeasureRisk(risk_request(images, test, kept_attributes=["smile"]), timeout=60).operation
    kept = dict(operations.result(op.name, an.RiskResult, poll_seconds=0.5, timeout=300).metrics)
    assert kept["smile_kept_agreement"] == kept["smile_kept_original"]
    assert kept["smile_kept_utility"] == (1.0 if kept["smile_kept_original"] > 0 else 0.0)
    # released images of other faces: the true values of the previewed faces are judged on someone else
    op = stub.MeasureRisk(risk_request(images, test, shown=test[1:5], kept_attributes=["smile"]), timeout=60).operation
    swapped = dict(operations.result(op.name, an.RiskResult, poll_seconds=0.5, timeout=300).metrics)
    assert swapped["smile_kept_original"] == kept["smile_kept_original"]
    assert swapped["smile_kept_agreement"] >= 0 and "smile_kept_utility" in swapped
    # each released image shows the next face of the gallery: no one's own original is found first
    op = stub.MeasureRisk(risk_request(images, test, shown=test[1:5]), timeout=60).operation
    other = dict(operations.result(op.name, an.RiskResult, poll_seconds=0.5, timeout=300).metrics)
    assert other["reid_rank1"] == 0.0 and other["reid_gallery"] == len(test)
    assert other["gender_classifier_chance"] == 0.5
    # the same request_id: the same (finished) operation, not a new measurement
    again = stub.MeasureRisk(risk_request(images, test, request_id=request_id), timeout=60).operation
    assert again.name == first.name and again.done


def test_evaluation_of_a_release(services):
    _, anonymizer, _, test = services
    stub, operations = stubs(anonymizer)
    request = evaluation_request(test, request_id="7c0c5d0e-0000-4000-8000-000000000002")
    op = stub.EvaluateRelease(request, timeout=60).operation
    assert stub.EvaluateRelease(request, timeout=60).operation.name == op.name  # the same request_id
    result = operations.result(op.name, an.EvaluationResult, poll_seconds=0.5, timeout=500)
    metrics = dict(result.metrics)
    assert metrics["reid_rank1"] == 1.0 and metrics["reid_verify_rate"] == 1.0 and metrics["reid_faces"] == len(test)
    assert 0 <= metrics["adversary_gender_bacc"] <= 1 and metrics["adversary_gender_chance"] == 0.5
    assert 0 <= metrics["kept_smile_bacc_trained_on_released"] <= 1
    assert metrics["kept_smile_utility_ratio"] >= 0
    assert set(result.skipped) == {"age"}  # a number, not a category
    assert operations.get(op.name).done


@pytest.mark.parametrize(("overrides", "field"), [
    ({"sample_keys": []}, "sample_keys"),
    ({"sample_keys": ["synth-000000"] * 2}, "sample_keys"),
    ({"gallery_sample_keys": ["synth-000004"]}, "gallery_sample_keys"),
    ({"dataset": refs_pb2.DatasetRef(dataset="datasets/faces", version=0)}, "dataset.version"),
    ({"dataset": refs_pb2.DatasetRef(dataset="faces!", version=1)}, "dataset.dataset"),
    ({"released_images": [png(b"not an image")] * 4}, "released_images[0].data"),
    ({"protected_attributes": ["race"]}, "protected_attributes"),
    ({"kept_attributes": ["gender"]}, "kept_attributes"),
    ({"kept_attributes": ["hair"]}, "kept_attributes"),
    ({"seed": -1}, "seed"),
])
def test_bad_risk_requests_are_refused_by_field(services, overrides, field):
    _, anonymizer, images, test = services
    stub, _ = stubs(anonymizer)
    with pytest.raises(grpc.RpcError) as error:
        stub.MeasureRisk(risk_request(images, test, **overrides), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    assert status_details(error.value)["fields"] == [field]


def test_bad_risk_requests_naming_keys_or_images_wrongly_are_refused(services):
    _, anonymizer, images, test = services
    stub, _ = stubs(anonymizer)
    request = risk_request(images, test)
    for change, field in (
            (lambda r: r.gallery_sample_keys.append("nobody"), "gallery_sample_keys"),
            (lambda r: r.gallery_sample_keys.append("synth-000001"), "gallery_sample_keys"),  # a training face
            (lambda r: r.released_images.pop(), "released_images"),
            (lambda r: setattr(r.released_images[1], "sample_key", test[0]), "released_images[1].sample_key")):
        bad = an.MeasureRiskRequest()
        bad.CopyFrom(request)
        change(bad)
        with pytest.raises(grpc.RpcError) as error:
            stub.MeasureRisk(bad, timeout=30)
        assert status_details(error.value)["fields"] == [field], error.value.details()


@pytest.mark.parametrize(("overrides", "field"), [
    ({"anonymized_version": 0}, "anonymized_version"),
    ({"sample_keys": []}, "sample_keys"),
    ({"sample_keys": ["synth-000001"]}, "sample_keys"),  # a training face
    ({"kept_attributes": ["gender"]}, "kept_attributes"),
    ({"protected_attributes": ["race"]}, "protected_attributes"),
    ({"seed": 2**40}, "seed"),
])
def test_bad_evaluation_requests_are_refused_by_field(services, overrides, field):
    _, anonymizer, _, test = services
    stub, _ = stubs(anonymizer)
    with pytest.raises(grpc.RpcError) as error:
        stub.EvaluateRelease(evaluation_request(test, **overrides), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    assert status_details(error.value)["fields"] == [field]


def test_missing_versions_other_tenants_and_tenant_keys_are_refused(services):
    coordinator, anonymizer, images, test = services
    stub, _ = stubs(anonymizer)
    with pytest.raises(grpc.RpcError) as error:
        stub.EvaluateRelease(evaluation_request(test, anonymized_version=9), timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    other, _ = stubs(anonymizer, tenant="other")  # the service credential acting for a tenant without the dataset
    with pytest.raises(grpc.RpcError) as error:
        other.MeasureRisk(risk_request(images, test), timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as error:
        other.EvaluateRelease(evaluation_request(test), timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    # a tenant's API key (the coordinator's public credential) is not the service credential
    tenant_key = anonymizer_service_pb2_grpc.AnonymizerServiceStub(
        open_channel(anonymizer.target, coordinator.credential, tenant="acme"))
    for call, request in ((tenant_key.MeasureRisk, risk_request(images, test)),
                          (tenant_key.EvaluateRelease, evaluation_request(test))):
        with pytest.raises(grpc.RpcError) as error:
            call(request, timeout=30)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # the service credential acting for no tenant
    with pytest.raises(grpc.RpcError) as error:
        stubs(anonymizer, tenant="")[0].MeasureRisk(risk_request(images, test), timeout=30)
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
