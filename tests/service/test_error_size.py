"""An error never echoes a request's whole value: a protected attribute name of 1 MB gets INVALID_ARGUMENT that
names the field, not a status too large for gRPC's trailers ("RESOURCE_EXHAUSTED: Stream removed")."""

from __future__ import annotations

import grpc
import pytest

from support import start_service, status_details
from umbra.common.v1 import refs_pb2
from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.coordinator.v1 import job_service_pb2_grpc
from umbra.client.datasets import DatasetsClient
from umbra.dataset import synthetic
from umbra.dataset.images import SizePolicy


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    served = start_service("coordinator", home)
    faces = synthetic.write_folder(tmp_path_factory.mktemp("faces") / "faces", 12, size=16, seed=3)
    DatasetsClient(served.channel()).upload(faces, "faces", progress=False, policy=SizePolicy(size=16))
    yield served
    served.running.stop(0)


@pytest.mark.parametrize("field", ["protected_attributes", "kept_attributes"])
def test_a_megabyte_attribute_name_is_refused_by_field_with_a_short_status(coordinator, field):
    stub = job_service_pb2_grpc.JobServiceStub(coordinator.channel())
    spec = js.ProtectionJobSpec(dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1),
                                generator=refs_pb2.ModelRef(model="models/gen", version=1), preview_size=3,
                                **({"protected_attributes": ["gender"]} | {field: ["a" * 1_000_000]}))
    with pytest.raises(grpc.RpcError) as refused:
        stub.CreateProtectionJob(js.CreateProtectionJobRequest(job_id="big", spec=spec), timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()[:300]
    assert len(refused.value.details()) < 2000
    details = status_details(refused.value)
    assert any(field in f for f in details.get("fields", [])), details
    assert all(len(v) <= 300 for v in details.get("metadata", {}).values())
