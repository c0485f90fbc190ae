"""The anonymizer over real gRPC, with the coordinator beside it on the same object store: a small real DP
generator trained with Opacus (noise multiplicity 2), previews and a whole dataset anonymized with it, the ε of
every mechanism reported and charged to the privacy ledger, the output version committed by the coordinator's
own checks; bad input refused before any work."""

from __future__ import annotations

import io
import json
import math

import grpc
import pytest
from PIL import Image

from support import SERVICE_TOKEN, commit_faces, start_service, status_details, with_fields, write_extractor
from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
from umbra.anonymizer.v1 import anonymizer_service_pb2_grpc
from umbra.client.channel import open_channel
from umbra.client.datasets import DatasetsClient
from umbra.client.operations import OperationsClient
from umbra.common.v1 import privacy_pb2, refs_pb2
from umbra.coordinator.v1 import dataset_service_pb2 as cds
from umbra.coordinator.v1 import dataset_service_pb2_grpc, ledger_service_pb2, ledger_service_pb2_grpc
from umbra.dataset import synthetic
from umbra.dataset.images import SizePolicy
from umbra.storage import keys
from umbra.storage.datasets import DatasetReader
from umbra.storage.local import LocalObjectStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # the generator fixture may wait 660 s
FACES = 40
GENERATOR = refs_pb2.ModelRef(model="models/faces-gen", version=1)


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    coordinator = start_service("coordinator", home, budget=(1e5, 0.1))
    anonymizer = start_service("anonymizer", home, coordinator=coordinator)
    faces = synthetic.write_folder(tmp_path_factory.mktemp("faces") / "faces", FACES, size=32, seed=3)
    DatasetsClient(coordinator.channel()).upload(faces, "faces", progress=False, shard_bytes=20_000,
                                                 policy=SizePolicy(size=32))
    store = LocalObjectStore(home / "objects")
    write_extractor(store, "umbra-acme", "gender-classifier")
    commit_faces(store, "umbra-acme", 12, dataset="tiny", size=16, seed=5)
    store.ensure_bucket("umbra-other")
    commit_faces(store, "umbra-other", 12, size=32)
    yield coordinator, anonymizer, store, home
    anonymizer.running.stop(grace=0)
    coordinator.running.stop(grace=0)


def balance(coordinator, dataset: str = "datasets/faces") -> ledger_service_pb2.GetPrivacyBalanceResponse:
    """What the coordinator's ledger says the tenant has spent on `dataset` (tight and basic composition)."""
    stub = ledger_service_pb2_grpc.LedgerServiceStub(coordinator.channel())
    return stub.GetPrivacyBalance(ledger_service_pb2.GetPrivacyBalanceRequest(dataset=dataset), timeout=60)


def stubs(anonymizer):
    channel = anonymizer.channel()
    return anonymizer_service_pb2_grpc.AnonymizerServiceStub(channel), OperationsClient(channel)


def train_request(**overrides) -> an.TrainGeneratorRequest:
    return with_fields(an.TrainGeneratorRequest(
        dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1), condition_attributes=["gender", "age"],
        model="models/faces-gen", image_size=32, epochs=2, batch_size=8, learning_rate=2e-3, seed=1,
        privacy=an.GeneratorPrivacy(target_epsilon=8.0, target_delta=1e-3, max_grad_norm=1.0, noise_multiplicity=2),
        budget=privacy_pb2.PrivacyBudget(epsilon=50.0, delta=1e-2)), **overrides)


def settings(**overrides) -> an.AnonymizationSettings:
    return with_fields(an.AnonymizationSettings(generator=GENERATOR, protected_attributes=["gender"],
                                                kept_attributes=["age"], intensity=0.75, steps=3, seed=2),
                       **overrides)


@pytest.fixture(scope="module")
def generator(services):
    _, anonymizer, store, _ = services
    stub, operations = stubs(anonymizer)
    op = stub.TrainGenerator(train_request(request_id="5b0c5d0e-0000-4000-8000-000000000001"), timeout=60).operation
    return operations.result(op.name, an.GeneratorResult, poll_seconds=0.5, timeout=600)


def test_dp_generator_is_trained_and_its_epsilon_recorded(services, generator):
    coordinator, _, store, _ = services
    assert generator.generator.model == "models/faces-gen" and generator.generator.version == 1
    cost = generator.privacy_cost
    assert cost.mechanism == privacy_pb2.PRIVACY_MECHANISM_DP_SGD
    assert 0 < cost.epsilon <= 8.0 and cost.delta == 1e-3
    assert cost.parameters["noise_multiplier"] > 0 and cost.parameters["steps"] > 0
    record = json.loads(store.get("umbra-acme", "models/faces-gen/v1/record.json"))
    assert record["kind"] == "generator" and record["privacy"]["noise_multiplicity"] == 2
    assert record["privacy"]["epsilon"] == cost.epsilon and record["condition_attributes"] == ["gender", "age"]
    config = json.loads(store.get("umbra-acme", "models/faces-gen/v1/config.json"))
    assert [a["name"] for a in config["attributes"]] == ["gender", "age"] and config["attributes"][1]["numeric"]
    spent = balance(coordinator)  # the target was reserved before training; what the run spent was committed
    assert spent.committed_entries == 1 and spent.reserved_entries == 0
    assert spent.spent_basic.epsilon == cost.epsilon and 0 < spent.spent.epsilon <= cost.epsilon


def test_estimate_composes_every_mechanism(services, generator):
    _, anonymizer, _, _ = services
    stub, _ = stubs(anonymizer)
    estimate = stub.EstimatePrivacyCost(an.EstimatePrivacyCostRequest(settings=settings(), image_count=100),
                                        timeout=30).privacy_cost
    assert estimate.mechanism == privacy_pb2.PRIVACY_MECHANISM_COMPOSITION
    parts = {c.mechanism: c for c in estimate.components}
    assert set(parts) == {privacy_pb2.PRIVACY_MECHANISM_GAUSSIAN, privacy_pb2.PRIVACY_MECHANISM_RANDOMIZED_RESPONSE,
                          privacy_pb2.PRIVACY_MECHANISM_DP_SGD}
    assert math.isclose(estimate.epsilon, math.fsum(c.epsilon for c in estimate.components))
    assert parts[privacy_pb2.PRIVACY_MECHANISM_DP_SGD].epsilon == generator.privacy_cost.epsilon
    assert parts[privacy_pb2.PRIVACY_MECHANISM_RANDOMIZED_RESPONSE].epsilon == pytest.approx(0.3)
    higher = stub.EstimatePrivacyCost(an.EstimatePrivacyCostRequest(settings=settings(intensity=1.0)), timeout=30)
    assert higher.privacy_cost.epsilon < estimate.epsilon  # more intensity, less ε


def test_preview_returns_images_and_charges_once_per_request(services, generator):
    coordinator, anonymizer, store, _ = services
    stub, _ = stubs(anonymizer)
    reader = DatasetReader(store, "umbra-acme", "faces", 1)
    wanted = [s.key for s in reader.samples()][:3]
    request = an.AnonymizeRequest(settings=settings(), dataset=refs_pb2.DatasetRef(dataset="datasets/faces",
                                                                                   version=1),
                                  sample_keys=wanted, request_id="5b0c5d0e-0000-4000-8000-000000000002")
    before = balance(coordinator).spent_basic.epsilon
    response = stub.Anonymize(request, timeout=120)
    assert [i.image.sample_key for i in response.images] == wanted
    for item in response.images:
        image = Image.open(io.BytesIO(item.image.data))
        assert image.size == (32, 32) and item.image.width == 32  # the generator's size
        assert [a.attribute for a in item.released_attributes] == ["gender"]
        assert item.released_attributes[0].category in ("0", "1")
        assert item.privacy_cost.epsilon == response.privacy_cost.epsilon
    assert privacy_pb2.PRIVACY_MECHANISM_DP_SGD in [c.mechanism for c in response.privacy_cost.components]
    charged = balance(coordinator).spent_basic.epsilon - before
    image_and_attribute = [c.epsilon for c in response.privacy_cost.components
                           if c.mechanism != privacy_pb2.PRIVACY_MECHANISM_DP_SGD]
    assert charged == pytest.approx(math.fsum(image_and_attribute))  # ε_g was charged at training
    stub.Anonymize(request, timeout=120)  # a retry of the same request
    assert balance(coordinator).spent_basic.epsilon - before == pytest.approx(charged)


def test_budget_already_spent_is_refused_before_work(services, generator):
    coordinator, anonymizer, _, _ = services
    stub, _ = stubs(anonymizer)
    spent = balance(coordinator, "").spent  # a request's own limit applies to the tenant's composed spending
    tight = privacy_pb2.PrivacyBudget(epsilon=spent.epsilon + 0.01, delta=0.5)  # below any one preview's cost
    with pytest.raises(grpc.RpcError) as error:
        stub.Anonymize(an.AnonymizeRequest(settings=settings(budget=tight), sample_keys=["x"],
                                           dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1)),
                       timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # an unknown key: refused first
    reader_key = next(iter(DatasetReader(services[2], "umbra-acme", "faces", 1).samples())).key
    with pytest.raises(grpc.RpcError) as error:
        stub.Anonymize(an.AnonymizeRequest(settings=settings(budget=tight), sample_keys=[reader_key],
                                           dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1)),
                       timeout=30)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert status_details(error.value)["reason"] == "PRIVACY_BUDGET_EXHAUSTED"
    assert float(status_details(error.value)["metadata"]["remaining_epsilon"]) == pytest.approx(0.01)


def test_dataset_is_anonymized_into_a_committed_version(services, generator):
    coordinator, anonymizer, store, _ = services
    datasets = dataset_service_pb2_grpc.DatasetServiceStub(coordinator.channel())
    reserved = datasets.CreateDatasetVersion(cds.CreateDatasetVersionRequest(parent="datasets/faces", shard_count=1),
                                             timeout=30).dataset_version
    number = int(reserved.name.rsplit("/", 1)[1])
    stub, operations = stubs(anonymizer)
    op = stub.AnonymizeDataset(an.AnonymizeDatasetRequest(
        settings=settings(), dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1),
        output_dataset="datasets/faces", output_version=number), timeout=60).operation
    result = operations.result(op.name, an.AnonymizationResult, poll_seconds=0.5, timeout=600)
    assert result.image_count == FACES and result.left_out == 0
    assert result.privacy_cost.epsilon > 0 and len(result.privacy_cost.components) == 3

    commit = datasets.CommitDatasetVersion(cds.CommitDatasetVersionRequest(name=reserved.name), timeout=30)
    OperationsClient(coordinator.channel()).result(commit.operation.name, cds.DatasetVersion, poll_seconds=0.5)
    originals = {s.key: s for s in DatasetReader(store, "umbra-acme", "faces", 1).samples()}
    anonymized = DatasetReader(store, "umbra-acme", "faces", number)
    assert anonymized.header.image_size == 32 and anonymized.header.label_columns == ["age", "gender"]
    for sample, data in anonymized.iter_images():
        source = originals[sample.key]  # keys and splits kept
        assert sample.split == source.split and set(sample.labels) == {"gender", "age"}
        assert sample.labels["age"] == source.labels["age"]  # kept: the true value
        assert Image.open(io.BytesIO(data)).size == (32, 32)

    record = json.loads(store.get("umbra-acme", result.record.key))
    assert record["protected_attributes"] == ["gender"] and record["privacy"]["per_image"]["epsilon"] == \
        result.privacy_cost.epsilon
    for row in record["samples"]:
        assert set(row) == {"key", "released", "epsilon", "delta"}  # never an original protected value
        assert set(row["released"]) == {"gender"}
        assert anonymized.header.samples == FACES


@pytest.mark.parametrize(("overrides", "field"), [
    ({"protected_attributes": ["race"]}, "settings.protected_attributes"),
    ({"protected_attributes": ["smile"]}, "settings.protected_attributes"),  # the generator does not know it
    ({"protected_attributes": []}, "settings.protected_attributes"),
    ({"kept_attributes": ["gender"]}, "settings.kept_attributes"),
    ({"intensity": 1.5}, "settings.intensity"),
    ({"intensity": -0.1}, "settings.intensity"),
    ({"generator": refs_pb2.ModelRef(model="models/gender-classifier", version=1)}, "settings.generator"),
])
def test_bad_settings_are_refused_naming_the_field(services, generator, overrides, field):
    _, anonymizer, store, _ = services
    stub, _ = stubs(anonymizer)
    with pytest.raises(grpc.RpcError) as error:
        stub.AnonymizeDataset(an.AnonymizeDatasetRequest(
            settings=settings(**overrides), dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1),
            output_dataset="datasets/faces", output_version=9), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    assert status_details(error.value)["fields"] == [field]
    assert not list(store.list("umbra-acme", keys.version_prefix("faces", 9)))


def test_wrong_image_size_other_tenant_and_undp_training_are_refused(services, generator):
    _, anonymizer, _, _ = services
    stub, _ = stubs(anonymizer)
    with pytest.raises(grpc.RpcError) as error:  # 16 px images are smaller than the 32 px generator's
        stub.Anonymize(an.AnonymizeRequest(settings=settings(), sample_keys=["a"],
                                           dataset=refs_pb2.DatasetRef(dataset="datasets/tiny", version=1)),
                       timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "32 px" in error.value.details()
    other = anonymizer_service_pb2_grpc.AnonymizerServiceStub(open_channel(anonymizer.target, SERVICE_TOKEN,
                                                                           tenant="other"))
    with pytest.raises(grpc.RpcError) as error:
        other.Anonymize(an.AnonymizeRequest(settings=settings(), sample_keys=["a"],
                                            dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1)),
                        timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND and "models/faces-gen" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        stub.TrainGenerator(train_request(image_size=64), timeout=30)
    assert status_details(error.value)["fields"] == ["image_size"]
    with pytest.raises(grpc.RpcError) as error:  # no DP, but a budget: no finite ε to charge
        stub.TrainGenerator(train_request(privacy=an.GeneratorPrivacy()), timeout=30)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as error:
        stub.TrainGenerator(train_request(condition_attributes=["race"]), timeout=30)
    assert status_details(error.value)["fields"] == ["condition_attributes"]


def test_design_latent_size_and_public_starting_points_are_refused(services, generator):
    _, anonymizer, _, _ = services
    stub, operations = stubs(anonymizer)
    for overrides, field, reason in (
            ({"design": "vae"}, "design", "must be one of latent, pixel"),
            ({"latent_dim": 4}, "latent_dim", "must be 8 to 512"),
            ({"latent_dim": 4096}, "latent_dim", "must be 8 to 512"),
            ({"initialize_from": GENERATOR}, "initialize_from", "trained on datasets/faces itself"),
            # the shipped public generator: its card is for 64 px faces (this dataset's are 32 px); an unknown
            # name; and two starting points at once
            ({"initialize_from_public": "public-faces-64"}, "initialize_from_public",
             "public-faces-64 is for 64 px images, this run for 32 px"),
            ({"initialize_from_public": "faces-by-someone"}, "initialize_from_public", "Umbra ships public-faces-64"),
            ({"initialize_from_public": "public-faces-64", "initialize_from": GENERATOR}, "initialize_from_public",
             "not both")):
        with pytest.raises(grpc.RpcError) as error:
            stub.TrainGenerator(train_request(**overrides), timeout=30)
        assert status_details(error.value)["fields"] == [field] and reason in error.value.details()
    # a public generator of another tenant is not in this tenant's registry
    other = anonymizer_service_pb2_grpc.AnonymizerServiceStub(open_channel(anonymizer.target, SERVICE_TOKEN,
                                                                           tenant="other"))
    public = an.TrainGeneratorRequest(dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1),
                                      condition_attributes=["gender"], model="models/public-gen", image_size=16,
                                      epochs=1, batch_size=4, seed=1, latent_dim=16)
    op = other.TrainGenerator(public, timeout=30).operation
    OperationsClient(open_channel(anonymizer.target, SERVICE_TOKEN, tenant="other")).result(
        op.name, an.GeneratorResult, poll_seconds=0.5, timeout=300)
    with pytest.raises(grpc.RpcError) as error:
        stub.TrainGenerator(train_request(initialize_from=refs_pb2.ModelRef(model="models/public-gen", version=1)),
                            timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    # the tenant's own public generator (16 px, a 16-number latent): another latent size or design is refused
    public.dataset.dataset = "datasets/tiny"
    op = stub.TrainGenerator(public, timeout=30).operation
    start = operations.result(op.name, an.GeneratorResult, poll_seconds=0.5, timeout=300).generator
    for overrides, reason in (({"latent_dim": 8}, "has a 16-number latent, this run 8"),
                              ({"design": "pixel"}, "is a latent generator, this run trains a pixel one"),
                              ({"image_size": 32}, "is for 16 px images, this run for 32 px")):
        with pytest.raises(grpc.RpcError) as error:
            stub.TrainGenerator(train_request(dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1),
                                              initialize_from=start, **{"image_size": 16, **overrides}), timeout=30)
        assert status_details(error.value)["fields"] == ["initialize_from"], error.value.details()
        assert reason in error.value.details()
