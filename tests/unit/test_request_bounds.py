"""Every numeric field of the worker services' requests has a range, and a value outside it (too big, negative,
NaN, infinite) is refused by the request's plan, before any work, with InvalidInput naming the field; forged page
tokens carrying numbers are INVALID_ARGUMENT, never INTERNAL; and a training run keeps one checkpoint, not one
per epoch."""

from __future__ import annotations

import base64
import json
import math

import grpc
import pytest

from support import commit_faces, create_tenant, start_coordinator, status_details, with_fields, write_extractor
from umbra.anonymization import anonymize as anon
from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
from umbra.classifiers import job, loop
from umbra.classifiers.registry import ModelRegistry
from umbra.client.channel import open_channel
from umbra.common.v1 import refs_pb2
from umbra.coordinator.v1 import dataset_service_pb2 as ds
from umbra.coordinator.v1 import dataset_service_pb2_grpc
from umbra.diffusion.attributes import Attribute
from umbra.diffusion.generator_config import GeneratorConfig
from umbra.distortion.v1 import distortion_service_pb2 as dd
from umbra.runtime import auth, pagination
from umbra.runtime.errors import InvalidInput
from umbra.services.anonymizer.servicer import AnonymizerServicer
from umbra.services.distortion.servicer import DistortionServicer
from umbra.services.training.servicer import TrainingServicer
from umbra.services.unlearning import convert as unlearning
from umbra.storage.datasets import DatasetReader
from umbra.storage.local import LocalObjectStore
from umbra.training.v1 import training_service_pb2 as ts
from umbra.unlearning.v1 import unlearning_service_pb2 as us

TENANT, BUCKET = "acme", "umbra-acme"
NAN, INF = math.nan, math.inf
HUGE = 10**9  # the finding's epochs
RUN = "0" * 31 + "1"


class _Runner:
    """Enough of an OperationRunner for a servicer's constructor: the tests call the plans themselves."""

    def register_resumer(self, kind, resume) -> None:
        pass


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> LocalObjectStore:
    store = LocalObjectStore(tmp_path_factory.mktemp("objects"))
    store.ensure_bucket(BUCKET)
    commit_faces(store, BUCKET, 40, size=32, seed=4)
    write_extractor(store, BUCKET, "extractor", task="gender")
    return store


def refused(plan, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        plan()
    assert caught.value.field == field, caught.value.message


# --- training: TrainRequest ------------------------------------------------------------------------------------

def train_request(**overrides) -> ts.TrainRequest:
    return with_fields(ts.TrainRequest(
        model="models/smile", dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1), task="smile",
        architecture=ts.ARCHITECTURE_GROUPNORM_CNN, seed=0,
        hyperparameters=ts.Hyperparameters(epochs=2, batch_size=8, physical_batch_size=8, learning_rate=2e-3),
        differential_privacy=ts.DifferentialPrivacy(target_epsilon=4.0, target_delta=1e-3, max_grad_norm=1.0)),
        **overrides)


def _hyper(**fields) -> ts.Hyperparameters:
    return with_fields(ts.Hyperparameters(epochs=2, batch_size=8, physical_batch_size=8, learning_rate=2e-3), **fields)


def _dp(**fields) -> ts.DifferentialPrivacy:
    return with_fields(ts.DifferentialPrivacy(target_epsilon=4.0, target_delta=1e-3, max_grad_norm=1.0), **fields)


TRAIN_CASES = [
    *[({"hyperparameters": _hyper(epochs=v)}, "hyperparameters.epochs") for v in (HUGE, loop.MAX_EPOCHS + 1, -1)],
    *[({"hyperparameters": _hyper(batch_size=v)}, "hyperparameters.batch_size") for v in (HUGE, -1)],
    *[({"hyperparameters": _hyper(physical_batch_size=v)}, "hyperparameters.physical_batch_size")
      for v in (HUGE, loop.MAX_PHYSICAL_BATCH_SIZE + 1, -1)],
    *[({"hyperparameters": _hyper(learning_rate=v)}, "hyperparameters.learning_rate")
      for v in (NAN, INF, -1.0, loop.MAX_LEARNING_RATE * 2)],
    *[({"hyperparameters": _hyper(momentum=v)}, "hyperparameters.momentum") for v in (NAN, INF, 1.0, -0.5)],
    *[({"hyperparameters": _hyper(weight_decay=v)}, "hyperparameters.weight_decay") for v in (NAN, INF, -1.0, 1e9)],
    *[({"hyperparameters": _hyper(image_size=v)}, "hyperparameters.image_size") for v in (HUGE, -1)],
    *[({"hyperparameters": _hyper(augmentation_multiplicity=v)}, "hyperparameters.augmentation_multiplicity")
      for v in (HUGE, -1)],
    *[({"hyperparameters": _hyper(width=v)}, "hyperparameters.width") for v in (HUGE, -1)],
    *[({"differential_privacy": _dp(target_epsilon=v)}, "differential_privacy.target_epsilon")
      for v in (NAN, INF, 1e300)],
    *[({"differential_privacy": _dp(target_epsilon=0, noise_multiplier=v)}, "differential_privacy.noise_multiplier")
      for v in (NAN, INF, 1e300)],
    ({"differential_privacy": _dp(noise_multiplier=-1.0)}, "differential_privacy.noise_multiplier"),
    *[({"differential_privacy": _dp(target_delta=v)}, "differential_privacy.target_delta") for v in (NAN, INF, -1.0)],
    *[({"differential_privacy": _dp(max_grad_norm=v)}, "differential_privacy.max_grad_norm")
      for v in (NAN, INF, -1.0, 1e9)],
    *[({"seed": v}, "seed") for v in (-1, 2**40)],
    ({"dataset": refs_pb2.DatasetRef(dataset="datasets/faces", version=-1)}, "dataset.version"),
    ({"initialize_from": refs_pb2.ModelRef(model="models/x-start", version=-1)}, "initialize_from"),
]


@pytest.mark.parametrize("overrides, field", TRAIN_CASES)
def test_train_request_numbers_out_of_range_are_refused(store, overrides, field):
    servicer = TrainingServicer(store, _Runner())
    refused(lambda: servicer._plan_train(TENANT, train_request(**overrides)), field)


def test_a_train_request_in_range_is_planned(store):
    planned = TrainingServicer(store, _Runner())._plan_train(TENANT, train_request())
    assert planned.hyper.epochs == 2 and planned.dp.target_epsilon == 4.0


# --- anonymizer: TrainGeneratorRequest, AnonymizationSettings, EstimatePrivacyCostRequest ------------------------

def generator_request(**overrides) -> an.TrainGeneratorRequest:
    return with_fields(an.TrainGeneratorRequest(
        dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1), condition_attributes=["gender"],
        model="models/gen", image_size=32, epochs=1, batch_size=8, learning_rate=1e-3, seed=1,
        privacy=an.GeneratorPrivacy(target_epsilon=8.0, target_delta=1e-3, max_grad_norm=1.0)), **overrides)


def _privacy(**fields) -> an.GeneratorPrivacy:
    return with_fields(an.GeneratorPrivacy(target_epsilon=8.0, target_delta=1e-3, max_grad_norm=1.0), **fields)


GENERATOR_CASES = [
    *[({"epochs": v}, "epochs") for v in (HUGE, -1)],
    *[({"batch_size": v}, "batch_size") for v in (HUGE, -1)],
    *[({"learning_rate": v}, "learning_rate") for v in (NAN, INF, -1.0, 2.0)],
    *[({"image_size": v}, "image_size") for v in (HUGE, -1)],
    *[({"seed": v}, "seed") for v in (-1, 2**40)],
    *[({"privacy": _privacy(target_epsilon=v)}, "privacy.target_epsilon") for v in (NAN, INF, 1e300, -1.0)],
    *[({"privacy": _privacy(target_delta=v)}, "privacy.target_delta") for v in (NAN, INF, -1.0)],
    *[({"privacy": _privacy(target_epsilon=0, target_delta=v)}, "privacy.target_delta") for v in (NAN, 2.0)],
    *[({"privacy": _privacy(max_grad_norm=v)}, "privacy.max_grad_norm") for v in (NAN, INF, -1.0, 1e9)],
    ({"privacy": _privacy(target_epsilon=0, max_grad_norm=NAN)}, "privacy.max_grad_norm"),
    *[({"privacy": _privacy(noise_multiplicity=v)}, "privacy.noise_multiplicity") for v in (HUGE, -1)],
]


@pytest.mark.parametrize("overrides, field", GENERATOR_CASES)
def test_train_generator_numbers_out_of_range_are_refused(store, overrides, field):
    servicer = AnonymizerServicer(store, _Runner(), ledger=None)
    refused(lambda: servicer._plan_training(TENANT, generator_request(**overrides)), field)


def test_a_train_generator_request_in_range_is_planned(store):
    planned = AnonymizerServicer(store, _Runner(), ledger=None)._plan_training(TENANT, generator_request())
    assert planned.job.hyper.epochs == 1 and planned.job.dp.target_epsilon == 8.0


SETTINGS_CASES = [
    *[({"intensity": v}, "settings.intensity") for v in (NAN, INF, -0.5, 1.5)],
    *[({"steps": v}, "settings.steps") for v in (HUGE, -1)],
    *[({"seed": v}, "settings.seed") for v in (-1, 2**40)],
]


@pytest.mark.parametrize("overrides, field", SETTINGS_CASES)
def test_anonymization_settings_out_of_range_are_refused(overrides, field):
    generator = anon.Generator("gen", 1, GeneratorConfig(image_size=32, attributes=(Attribute("gender", ("0", "1")),)),
                               {})
    settings = {"intensity": 0.5, "steps": 0, "seed": 1, **overrides}
    refused(lambda: anon.check(generator, dataset_id="faces", label_columns=["gender"], image_size=32,
                               protected=["gender"], kept=[], **settings), field)


@pytest.mark.parametrize("count", [-1, 10**18])
def test_estimate_privacy_cost_image_count_out_of_range_is_refused(store, count):
    servicer = AnonymizerServicer(store, _Runner(), ledger=None)
    with auth.bound(auth.Principal("service", TENANT)):
        refused(lambda: servicer.EstimatePrivacyCost(an.EstimatePrivacyCostRequest(image_count=count), None),
                "image_count")


# --- distortion: DistortDatasetRequest ---------------------------------------------------------------------------

def distort_request(**overrides) -> dd.DistortDatasetRequest:
    return with_fields(dd.DistortDatasetRequest(
        dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1), label_column="gender", copies=1,
        feature_extractor=refs_pb2.ModelRef(model="models/extractor", version=1), output_dataset="datasets/faces",
        output_version=2), **overrides)


DISTORT_CASES = [
    *[({"copies": v}, "copies") for v in (HUGE, 0, -1)],
    *[({"steps": v}, "steps") for v in (HUGE, -1)],
    *[({"step_size": v}, "step_size") for v in (NAN, INF, -1.0, 1e9)],
    *[({"momentum": v}, "momentum") for v in (NAN, INF, 1.0, -0.5)],
    *[({"batch_size": v}, "batch_size") for v in (HUGE, -1)],
    *[({"seed": v}, "seed") for v in (-1, 2**40)],
    *[({"output_version": v}, "output_version") for v in (0, -1)],
]


@pytest.mark.parametrize("overrides, field", DISTORT_CASES)
def test_distort_request_numbers_out_of_range_are_refused(store, overrides, field):
    servicer = DistortionServicer(store, _Runner())
    refused(lambda: servicer._plan(TENANT, distort_request(**overrides)), field)


# --- unlearning: UnlearnRequest ----------------------------------------------------------------------------------

UNLEARN_CASES = [
    *[({"tau": v}, "tau") for v in (NAN, INF, -1.0, 1e300)],
    *[({"lissa": us.Lissa(damping=v)}, "lissa.damping") for v in (NAN, INF, -0.5, 1.0)],
    *[({"lissa": us.Lissa(scale=v)}, "lissa.scale") for v in (NAN, INF, -1.0, 1e300)],
    *[({"lissa": us.Lissa(depth=v)}, "lissa.depth") for v in (HUGE, -1)],
    *[({"lissa": us.Lissa(patience=v)}, "lissa.patience") for v in (HUGE, -1)],
    *[({"lissa": us.Lissa(batch_size=v)}, "lissa.batch_size") for v in (HUGE, -1)],
]


@pytest.mark.parametrize("overrides, field", UNLEARN_CASES)
def test_unlearn_request_numbers_out_of_range_are_refused(overrides, field):
    request = with_fields(us.UnlearnRequest(method=us.METHOD_SECOND_ORDER), **overrides)
    refused(lambda: unlearning.settings_from_proto(request), field)


# --- page tokens that carry a number -----------------------------------------------------------------------------

@pytest.mark.parametrize("position", ["9" * 40, str(pagination.MAX_POSITION + 1), "١", "²", "-1", "1.5", " 1",
                                      "1\n"])
def test_a_forged_numeric_position_is_invalid_input(position):
    refused(lambda: pagination.integer_position(position), "page_token")


def test_numeric_positions_round_trip():
    assert pagination.integer_position(None) == 0 and pagination.integer_position("") == 0
    assert pagination.integer_position("17") == 17
    assert pagination.integer_position(str(pagination.MAX_POSITION)) == pagination.MAX_POSITION


def _forged(position: str, query: str) -> str:
    """What anyone can make: a token is not signed, and its query hash is a public function of the query."""
    raw = json.dumps({"after": position, "query": pagination._query_hash(query)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.slow
def test_forged_version_tokens_are_invalid_argument_not_internal(tmp_path):
    running = start_coordinator(tmp_path / "home")
    try:
        target = f"127.0.0.1:{running.port}"
        channel = open_channel(target, create_tenant(target, TENANT))
        stub = dataset_service_pb2_grpc.DatasetServiceStub(channel)
        stub.CreateDataset(ds.CreateDatasetRequest(dataset_id="faces"), timeout=10)
        for position in ("9" * 40, "١", "²"):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ListDatasetVersions(ds.ListDatasetVersionsRequest(
                    parent="datasets/faces", page_token=_forged(position, "versions/faces")), timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, position
            assert status_details(caught.value)["fields"] == ["page_token"]
        channel.close()
    finally:
        running.stop(grace=0)


# --- checkpoints: one per run, whatever its epochs ---------------------------------------------------------------

def _checkpoint_keys(store, model: str = "smile") -> list[str]:
    return sorted(i.key for i in store.list(BUCKET, f"models/{model}/runs/"))


def test_a_run_keeps_only_its_latest_checkpoint(tmp_path):
    store = LocalObjectStore(tmp_path / "objects")
    store.ensure_bucket(BUCKET)
    registry = ModelRegistry(store)
    for epoch in (1, 2, 3, 9999, 10_000):
        key = registry.save_checkpoint(BUCKET, "smile", RUN, epoch, {"epoch": epoch})
        assert _checkpoint_keys(store) == [key]
    assert registry.latest_checkpoint(BUCKET, "smile", RUN) == {"epoch": 10_000}  # by number, not by name
    registry.delete_checkpoints(BUCKET, "smile", RUN)
    assert _checkpoint_keys(store) == [] and registry.latest_checkpoint(BUCKET, "smile", RUN) is None


def test_training_holds_one_checkpoint_while_it_runs_and_none_after(tmp_path):
    store = LocalObjectStore(tmp_path / "objects")
    store.ensure_bucket(BUCKET)
    commit_faces(store, BUCKET, 24, size=32, seed=4)
    registry = ModelRegistry(store)
    planned = job.plan(registry, BUCKET, model="smile", reader=DatasetReader(store, BUCKET, "faces", 1), task="smile",
                       split="train", architecture="groupnorm_cnn", image_size=32, width=8, dp=None, seed=0,
                       hyper=loop.Hyperparameters(epochs=4, batch_size=8, learning_rate=1e-3), start=None,
                       revised=None)
    held = []

    def progress(stage, epoch=None, checkpoint="", privacy=None):
        if epoch is not None:
            held.append(_checkpoint_keys(store))
            assert held[-1] == [checkpoint]

    result = job.run(planned, run_id=RUN, progress=progress)
    assert len(held) == 4 and result.version == 1
    assert _checkpoint_keys(store) == []  # the version is written: nothing is left to resume from
