"""Issue 26, over real gRPC: one tenant's long operations must not starve another tenant's. The coordinator runs
with two operation slots (UMBRA_MAX_WORKERS=8: max(2, 8 // 4)); tenant acme publishes six models to an inference
server that is not up yet (UMBRA_INFERENCE_URL names a port nobody listens on), so each PublishModel operation
holds its slot up to two minutes waiting for its model to be served, and four wait in the queue. Tenant globex
uploads a dataset meanwhile: its commit (an operation on the same pool) queues too. When one of acme's operations
ends (acme cancels it), the free slot is globex's, not acme's next one, and the upload finishes within seconds
(it used to wait behind all of acme's). Cancelled, acme's queued operations end at once.

"""

from __future__ import annotations

import threading
import time

import pytest
from google.rpc import code_pb2

from support import create_tenant, free_port, start_service, write_extractor
from umbra.client.channel import open_channel
from umbra.client.datasets import DatasetsClient
from umbra.client.operations import OperationsClient, progress_of
from umbra.common.v1 import refs_pb2
from umbra.coordinator.v1 import dataset_service_pb2 as ds
from umbra.coordinator.v1 import model_service_pb2 as ms
from umbra.coordinator.v1 import model_service_pb2_grpc
from umbra.dataset import synthetic
from umbra.dataset.images import SizePolicy
from umbra.storage.local import LocalObjectStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
PUBLISHES = 6


def stages(operations: OperationsClient, names: list[str]) -> list[str]:
    return [progress_of(operations.get(name)).stage for name in names]


def test_one_tenants_long_operations_do_not_starve_another_tenants_upload(tmp_path):
    home = tmp_path / "home"
    served = start_service("coordinator", home, "acme", UMBRA_MAX_WORKERS="8",
                           UMBRA_INFERENCE_URL=f"127.0.0.1:{free_port()}")
    try:
        write_extractor(LocalObjectStore(home / "objects"), "umbra-acme", "faces-cls")
        acme = model_service_pb2_grpc.ModelServiceStub(served.channel())
        acme_operations = OperationsClient(served.channel())
        publishes = [acme.PublishModel(ms.PublishModelRequest(
            publication_id=f"faces-{i}", model=refs_pb2.ModelRef(model="models/faces-cls", version=1),
            request_id=f"publish-{i}"), timeout=30).operation.name for i in range(PUBLISHES)]
        deadline = time.monotonic() + 30
        while stages(acme_operations, publishes).count("loading") < 2:
            assert time.monotonic() < deadline, "acme's publications never started"
            time.sleep(0.1)
        time.sleep(0.5)
        assert stages(acme_operations, publishes).count("queued") == PUBLISHES - 2  # both slots are acme's

        globex_channel = open_channel(served.target, create_tenant(served.target, "globex"))
        globex, globex_operations = DatasetsClient(globex_channel), OperationsClient(globex_channel)
        faces = synthetic.write_folder(tmp_path / "faces", 8, size=32, seed=5)
        uploaded: list[ds.DatasetVersion] = []
        upload = threading.Thread(target=lambda: uploaded.append(
            globex.upload(faces, "faces", progress=False, policy=SizePolicy(size=32))), daemon=True)
        upload.start()
        deadline = time.monotonic() + 30
        while not list(globex_operations.list(filter="done = false")):
            assert time.monotonic() < deadline, "globex's upload never asked for its commit"
            time.sleep(0.1)
        commit = next(iter(globex_operations.list(filter="done = false")))
        assert progress_of(commit).stage == "queued"  # both slots are acme's

        running = [name for name, stage in zip(publishes, stages(acme_operations, publishes), strict=True)
                   if stage == "loading"]
        begun = time.monotonic()
        acme_operations.cancel(running[0])  # one of acme's operations ends: the slot it frees is globex's
        upload.join(30)
        assert uploaded, (f"globex's upload did not finish {time.monotonic() - begun:.0f} s after a slot freed: "
                          "its commit waited behind acme's queued operations")
        assert uploaded[0].state == ds.DatasetVersion.STATE_COMMITTED

        queued = [name for name, stage in zip(publishes, stages(acme_operations, publishes), strict=True)
                  if stage == "queued"]
        assert queued, "acme's queued publications started while they should still wait"
        for name in queued:  # a queued operation leaves its queue at once: no waiting for a slot
            acme_operations.cancel(name)
            op = acme_operations.get(name)
            assert op.done and op.error.code == code_pb2.CANCELLED, op
            assert progress_of(op).stage == "cancelled"
        for name in publishes:
            acme_operations.cancel(name)
        for name in publishes:
            op = acme_operations.wait(name, timeout=15, poll_seconds=0.5)
            assert op.done and op.error.code == code_pb2.CANCELLED, op
    finally:
        served.running.stop(grace=2)
