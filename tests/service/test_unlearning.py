"""The unlearning service over real gRPC, with the training service beside it on the same object store: a model
trained through the training service is unlearned onto revised images (second order, verified by retraining
through the training service) and onto removed samples (first order, a DP model); a diverging update is
refused and leaves the source model as it was; bad input is refused before any compute."""

from __future__ import annotations

import io
import json

import grpc
import pytest
from PIL import Image, ImageFilter

from support import SERVICE_TOKEN, commit_faces, commit_samples, config_for, status_details, with_fields
from umbra.client.channel import open_channel
from umbra.client.errors import OperationFailed
from umbra.client.operations import OperationsClient
from umbra.common.v1 import refs_pb2
from umbra.runtime.server import create_server
from umbra.services.registry import spec
from umbra.storage.local import LocalObjectStore
from umbra.training.v1 import training_service_pb2 as ts
from umbra.training.v1 import training_service_pb2_grpc
from umbra.unlearning.v1 import unlearning_service_pb2 as us
from umbra.unlearning.v1 import unlearning_service_pb2_grpc

pytestmark = pytest.mark.slow
BUCKET = "umbra-acme"


def blurred(png: bytes) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).filter(ImageFilter.GaussianBlur(2)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    store = LocalObjectStore(home / "objects")
    store.ensure_bucket(BUCKET)
    original = commit_faces(store, BUCKET, 160, size=32, seed=5)
    images = dict((s.key, png) for s, png in original.iter_images())
    train = [s for s in original.samples() if s.split == "train"]
    # the revision: every 4th training image blurred (labels kept), one of them with its smile label flipped
    revised = [(s.key, s.split, dict(s.labels), blurred(images[s.key])) for s in train[::4]]
    revised[0][2]["smile"] = "1" if revised[0][2]["smile"] == "0" else "0"
    commit_samples(store, BUCKET, "faces-revised", 1, revised)
    stranger = ("not-in-faces", "train", {"smile": "0"}, images[train[0].key])
    commit_samples(store, BUCKET, "faces-stranger", 1, [stranger])
    commit_faces(store, BUCKET, 40, dataset="other", size=32, seed=6)
    training = create_server(config_for("training", home), spec("training")).start()
    training_target = f"127.0.0.1:{training.port}"
    unlearning = create_server(config_for("unlearning", home, UMBRA_TRAINING_URL=training_target),
                               spec("unlearning")).start()
    train_channel = open_channel(training_target, SERVICE_TOKEN, tenant="acme")
    channel = open_channel(f"127.0.0.1:{unlearning.port}", SERVICE_TOKEN, tenant="acme")
    trainer = training_service_pb2_grpc.TrainingServiceStub(train_channel)

    def train(model: str, dp: bool, dataset: str = "datasets/faces") -> ts.ModelVersion:
        request = ts.TrainRequest(
            model=model, dataset=refs_pb2.DatasetRef(dataset=dataset, version=1), task="smile",
            architecture=ts.ARCHITECTURE_GROUPNORM_CNN, seed=1,
            hyperparameters=ts.Hyperparameters(epochs=3, batch_size=16, physical_batch_size=16, learning_rate=3e-3,
                                               width=8))
        if dp:
            request.differential_privacy.CopyFrom(ts.DifferentialPrivacy(target_epsilon=8, target_delta=1e-3))
        op = trainer.Train(request, timeout=30).operation
        return OperationsClient(train_channel).result(op.name, ts.ModelVersion, poll_seconds=0.5)

    train("models/smile", dp=False)
    train("models/smile-dp", dp=True)
    train("models/smile-other", dp=False, dataset="datasets/other")
    yield {"stub": unlearning_service_pb2_grpc.UnlearningServiceStub(channel), "ops": OperationsClient(channel),
           "store": store, "revised": revised, "trainer": trainer, "target": f"127.0.0.1:{unlearning.port}"}
    unlearning.stop(grace=0)
    training.stop(grace=0)


def unlearn_request(**overrides) -> us.UnlearnRequest:
    return with_fields(us.UnlearnRequest(
        model=refs_pb2.ModelRef(model="models/smile", version=1),
        original=refs_pb2.DatasetRef(dataset="datasets/faces", version=1),
        revision=us.Revision(revised=refs_pb2.DatasetRef(dataset="datasets/faces-revised", version=1)),
        method=us.METHOD_SECOND_ORDER, lissa=us.Lissa(depth=30, batch_size=32), output_model="models/smile-revised"),
        **overrides)


def weights(store, model: str, version: int = 1) -> bytes:
    return store.get(BUCKET, f"models/{model}/v{version}/weights.safetensors")


def test_second_order_unlearning_verified_against_retraining(services):
    stub, ops, store = services["stub"], services["ops"], services["store"]
    source = weights(store, "smile")
    op = stub.Unlearn(unlearn_request(verify=True, probe_attribute="gender"), timeout=30).operation
    result = ops.result(op.name, us.UnlearningResult, poll_seconds=0.5)

    assert result.unlearned == refs_pb2.ModelRef(model="models/smile-revised", version=1)
    changed = len(services["revised"])
    assert result.changed_samples == changed and result.removed_samples == 0
    assert 0 < result.lissa_scale and result.tau > 0 and result.update_norm > 0 and result.seconds > 0
    assert result.gradient_evaluations >= 2 * changed  # the gradient difference, plus LiSSA's products
    assert result.loss_after <= result.loss_before * 1.01 and not result.outside_original_privacy_guarantee
    assert weights(store, "smile") == source  # the source version is never changed

    v = result.verification
    assert v.retrained == refs_pb2.ModelRef(model="models/smile-revised-retrained", version=1)
    assert v.test_count == 40 and v.retrain_seconds > 0
    for accuracy in (v.accuracy_original, v.accuracy_unlearned, v.accuracy_retrained, v.agreement_with_retrained):
        assert 0 <= accuracy <= 1
    assert v.parameter_distance > 0 and set(v.probe_balanced_accuracy) == {"original", "unlearned", "retrained"}

    record = json.loads(store.get(BUCKET, "models/smile-revised/v1/record.json"))
    assert record["unlearning"]["method"] == "second_order" and record["unlearning"]["lissa"]["depth"] == 30
    assert record["unlearning"]["source"] == {"model": "models/smile", "version": 1}
    assert record["revision"]["revised"] == {"dataset": "datasets/faces-revised", "version": 1}
    assert record["unlearning"]["gradient_evaluations"] == result.gradient_evaluations
    retrained = json.loads(store.get(BUCKET, "models/smile-revised-retrained/v1/record.json"))
    assert retrained["seed"] == 1 and retrained["hyperparameters"] == record["hyperparameters"]
    assert retrained["revision"]["replaced_keys"] == changed  # trained on the data as revised
    version = services["trainer"].GetModelVersion(ts.GetModelVersionRequest(name="models/smile-revised/versions/1"),
                                                  timeout=30).model_version
    assert version.training_record.task == "smile"  # the registry serves an unlearned version like any other


def test_first_order_removal_of_a_dp_model_says_epsilon_does_not_cover_it(services):
    stub, ops, store = services["stub"], services["ops"], services["store"]
    removed = [key for key, *_ in services["revised"][:5]]
    op = stub.Unlearn(unlearn_request(model=refs_pb2.ModelRef(model="models/smile-dp", version=1),
                                      revision=us.Revision(removed=us.RemovedKeys(keys=removed)),
                                      method=us.METHOD_FIRST_ORDER, output_model=""), timeout=30).operation
    result = ops.result(op.name, us.UnlearningResult, poll_seconds=0.5)
    assert result.unlearned == refs_pb2.ModelRef(model="models/smile-dp", version=2)  # default: the same model
    assert result.removed_samples == 5 and result.changed_samples == 0 and result.gradient_evaluations == 5
    assert result.outside_original_privacy_guarantee and result.loss_after <= result.loss_before
    assert not result.HasField("verification")
    record = json.loads(store.get(BUCKET, "models/smile-dp/v2/record.json"))
    assert "not covered" in record["unlearning"]["privacy"] and record["unlearning"]["tau_automatic"]


def test_a_diverging_update_is_refused_and_nothing_is_written(services):
    stub, ops, store = services["stub"], services["ops"], services["store"]
    source = weights(store, "smile")
    op = stub.Unlearn(unlearn_request(method=us.METHOD_FIRST_ORDER, tau=1e6, output_model="models/smile-diverged"),
                      timeout=30).operation
    with pytest.raises(OperationFailed) as caught:
        ops.result(op.name, us.UnlearningResult, poll_seconds=0.5)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "raises the revised training loss" in str(caught.value) and "unchanged" in str(caught.value)
    assert weights(store, "smile") == source
    assert not list(store.list(BUCKET, "models/smile-diverged/"))


@pytest.mark.parametrize("overrides, field", [
    ({"revision": us.Revision(revised=refs_pb2.DatasetRef(dataset="datasets/faces-stranger", version=1))},
     "revision.revised"),
    ({"original": refs_pb2.DatasetRef(dataset="datasets/other", version=1)}, "original"),
    ({"model": refs_pb2.ModelRef(model="models/smile-other", version=1)}, "original"),
    ({"revision": us.Revision(removed=us.RemovedKeys(keys=["no-such-key"]))}, "revision.removed.keys"),
    ({"revision": us.Revision()}, "revision"),
    ({"method": us.METHOD_UNSPECIFIED}, "method"),
    ({"tau": -1.0}, "tau"),
    ({"lissa": us.Lissa(damping=1.5)}, "lissa.damping"),
    ({"verify": True}, "probe_attribute"),
    ({"verify": True, "probe_attribute": "smile"}, "probe_attribute"),
    ({"output_model": "smile"}, "output_model"),
])
def test_bad_input_is_refused_before_any_compute(services, overrides, field):
    with pytest.raises(grpc.RpcError) as caught:
        services["stub"].Unlearn(unlearn_request(**overrides), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert status_details(caught.value)["fields"] == [field]


def test_removing_every_training_sample_is_refused(services):
    store = services["store"]
    from umbra.storage.datasets import DatasetReader

    everything = [s.key for s in DatasetReader(store, BUCKET, "faces", 1).samples() if s.split == "train"]
    with pytest.raises(grpc.RpcError) as caught:
        services["stub"].Unlearn(unlearn_request(revision=us.Revision(removed=us.RemovedKeys(keys=everything))),
                                 timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "trained on nothing" in caught.value.details()


def test_another_tenants_model_is_not_found(services):
    other = unlearning_service_pb2_grpc.UnlearningServiceStub(open_channel(services["target"], SERVICE_TOKEN,
                                                                           tenant="globex"))
    with pytest.raises(grpc.RpcError) as caught:
        other.Unlearn(unlearn_request(), timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
