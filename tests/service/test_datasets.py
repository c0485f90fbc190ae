"""Tenants and datasets through the coordinator, over real gRPC, with the local object store (bytes stream
through the coordinator). The same flow against a real S3 server is in tests/integration/."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import pytest

from support import ADMIN_KEY, create_tenant, start_coordinator, status_details
from umbra.client.channel import open_channel
from umbra.client.datasets import DatasetsClient, IngestRejected
from umbra.client.errors import OperationFailed, UmbraRpcError
from umbra.coordinator.v1 import dataset_service_pb2 as ds
from umbra.coordinator.v1 import tenant_service_pb2 as ts
from umbra.coordinator.v1 import tenant_service_pb2_grpc
from umbra.dataset import manifest as mf
from umbra.dataset import synthetic
from umbra.dataset.images import SizePolicy
from umbra.dataset.shards import ShardWriter


@pytest.fixture
def coordinator(tmp_path):
    running = start_coordinator(tmp_path / "home")
    yield running, f"127.0.0.1:{running.port}"
    running.stop(grace=0)


@pytest.fixture
def faces(tmp_path) -> Path:
    return synthetic.write_folder(tmp_path / "faces", 40, size=32, seed=3)


def datasets_for(target: str, key: str) -> DatasetsClient:
    return DatasetsClient(open_channel(target, key))


def files_of(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (folder / "images").iterdir()}


def test_tenants_and_keys(coordinator):
    _, target = coordinator
    admin = tenant_service_pb2_grpc.TenantServiceStub(open_channel(target, ADMIN_KEY))
    created = admin.CreateTenant(ts.CreateTenantRequest(tenant_id="acme"), timeout=10)
    assert created.tenant.name == "tenants/acme" and created.tenant.bucket == "umbra-acme"
    assert created.tenant.privacy_budget.epsilon == 10.0 and created.api_key_secret.startswith("umbra_")
    with pytest.raises(grpc.RpcError) as err:
        admin.CreateTenant(ts.CreateTenantRequest(tenant_id="acme"), timeout=10)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as err:
        admin.CreateTenant(ts.CreateTenantRequest(tenant_id="Acme Corp"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and status_details(err.value)["fields"] == ["tenant_id"]
    with pytest.raises(grpc.RpcError) as err:
        admin.CreateTenant(ts.CreateTenantRequest(tenant_id="globex", tenant=ts.Tenant(
            privacy_budget={"epsilon": -1})), timeout=10)
    assert status_details(err.value)["fields"] == ["tenant.privacy_budget.epsilon"]

    tenant = tenant_service_pb2_grpc.TenantServiceStub(open_channel(target, created.api_key_secret))
    assert tenant.GetTenant(ts.GetTenantRequest(name="tenants/acme"), timeout=10).tenant.display_name == "acme"
    with pytest.raises(grpc.RpcError) as err:
        tenant.ListTenants(ts.ListTenantsRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

    second = tenant.CreateApiKey(ts.CreateApiKeyRequest(display_name="ci"), timeout=10)
    assert len(tenant.ListApiKeys(ts.ListApiKeysRequest(), timeout=10).api_keys) == 2
    tenant.RevokeApiKey(ts.RevokeApiKeyRequest(name=second.api_key.name), timeout=10)
    revoked = tenant_service_pb2_grpc.TenantServiceStub(open_channel(target, second.api_key_secret))
    with pytest.raises(grpc.RpcError) as err:
        revoked.GetTenant(ts.GetTenantRequest(name="tenants/acme"), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    admin.DeleteTenant(ts.DeleteTenantRequest(name="tenants/acme"), timeout=10)
    with pytest.raises(grpc.RpcError) as err:  # a deleted tenant's keys stop working
        tenant.GetTenant(ts.GetTenantRequest(name="tenants/acme"), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_upload_commit_export_round_trip(coordinator, faces, tmp_path):
    _, target = coordinator
    client = datasets_for(target, create_tenant(target, "acme"))
    version = client.upload(faces, "faces", progress=False, shard_bytes=20_000, policy=SizePolicy(size=32))
    assert version.name == "datasets/faces/versions/1"
    assert version.state == ds.DatasetVersion.STATE_COMMITTED
    assert version.sample_count == 40 and version.shard_count > 1  # small shards: several of them
    assert sum(version.split_counts.values()) == 40
    assert {"gender", "glasses", "smile"} <= set(version.label_columns)

    count = client.export("datasets/faces/versions/1", tmp_path / "exported")
    assert count == 40
    exported = files_of(tmp_path / "exported")
    assert sorted(exported.values()) == sorted(files_of(faces).values())  # byte-identical images

    again = client.upload(faces, "faces", progress=False, shard_bytes=20_000, policy=SizePolicy(size=32))
    assert again.name == version.name  # the same upload again continues the same version: nothing duplicated
    listed = client.stub.ListDatasetVersions(ds.ListDatasetVersionsRequest(parent="datasets/faces"), timeout=10)
    assert [v.name for v in listed.dataset_versions] == [version.name]


def test_other_tenants_datasets_do_not_exist(coordinator, faces):
    _, target = coordinator
    acme = datasets_for(target, create_tenant(target, "acme"))
    acme.upload(faces, "faces", progress=False)
    globex = datasets_for(target, create_tenant(target, "globex"))
    for call in (lambda: globex.stub.GetDataset(ds.GetDatasetRequest(name="datasets/faces"), timeout=10),
                 lambda: globex.stub.GetDatasetVersion(ds.GetDatasetVersionRequest(
                     name="datasets/faces/versions/1"), timeout=10),
                 lambda: globex.stub.ExportDatasetVersion(ds.ExportDatasetVersionRequest(
                     name="datasets/faces/versions/1"), timeout=10),
                 lambda: globex.stub.DeleteDataset(ds.DeleteDatasetRequest(name="datasets/faces"), timeout=10)):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert not globex.stub.ListDatasets(ds.ListDatasetsRequest(), timeout=10).datasets


def test_bad_files_are_named_and_drop_invalid_leaves_them_out(coordinator, faces):
    _, target = coordinator
    client = datasets_for(target, create_tenant(target, "acme"))
    images = faces / "images"
    (images / "synth-000000.png").write_bytes((images / "synth-000000.png").read_bytes()[:60])  # corrupt
    (images / "synth-000001.png").write_text("not an image at all")
    (images / "synth-000002.png").write_bytes(b"")
    with pytest.raises(IngestRejected) as err:
        client.upload(faces, "faces", progress=False)
    named = {p.name for p in err.value.problems}
    assert {"synth-000000.png", "synth-000001.png", "synth-000002.png"} <= {Path(n).name for n in named}
    assert not client.stub.ListDatasets(ds.ListDatasetsRequest(), timeout=10).datasets  # nothing uploaded
    version = client.upload(faces, "faces", progress=False, drop_invalid=True)
    assert version.sample_count == 37


def _manual_version(client: DatasetsClient, dataset: str, tamper: bool) -> str:
    """A version uploaded by hand (not through upload()), optionally with a shard that lies."""
    client.ensure(dataset)
    images = {f"k{i}": synthetic_png(i) for i in range(4)}
    shards: dict[str, bytes] = {}
    writer = ShardWriter(lambda name, data: shards.__setitem__(name, data), max_bytes=4096)
    samples = [writer.add(mf.Sample(key=k, shard="", split="train", sha256=hashlib.sha256(v).hexdigest(),
                                    size=len(v)), v) for k, v in images.items()]
    writer.close()
    header = mf.Header(image_size=32, label_columns=[], attribute_columns=[], shards=sorted(shards),
                       samples=len(samples), shard_sha256={n: hashlib.sha256(d).hexdigest() for n, d in shards.items()})
    created = client.stub.CreateDatasetVersion(ds.CreateDatasetVersionRequest(
        parent=f"datasets/{dataset}", shard_count=len(shards)), timeout=10)
    for target in created.shard_targets:
        data = shards[target.shard]
        if tamper and target.shard == "shard-000000.tar":
            data = data.replace(b"k0.json", b"kX.json")
        client._put(created.dataset_version.name, target, data)
    client._put(created.dataset_version.name, created.manifest_target, mf.dumps(header, samples))
    return created.dataset_version.name


def synthetic_png(seed: int) -> bytes:
    return next(synthetic.generate(1, size=32, seed=seed)).png


def test_commit_checks_every_shard_and_publishes_nothing_on_failure(coordinator):
    _, target = coordinator
    client = datasets_for(target, create_tenant(target, "acme"))
    name = _manual_version(client, "hand", tamper=True)
    commit = client.stub.CommitDatasetVersion(ds.CommitDatasetVersionRequest(name=name), timeout=10)
    with pytest.raises(OperationFailed, match="shard_sha256"):
        client.operations.result(commit.operation.name, ds.DatasetVersion)
    state = client.stub.GetDatasetVersion(ds.GetDatasetVersionRequest(name=name), timeout=10).dataset_version
    assert state.state == ds.DatasetVersion.STATE_FAILED
    assert client.stub.GetDataset(ds.GetDatasetRequest(name="datasets/hand"), timeout=10).dataset.latest_version == 0
    with pytest.raises(grpc.RpcError) as err:
        client.stub.ExportDatasetVersion(ds.ExportDatasetVersionRequest(name=name), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_an_unfinished_upload_is_invisible_and_swept_after_a_restart(tmp_path):
    home = tmp_path / "home"
    running = start_coordinator(home)
    target = f"127.0.0.1:{running.port}"
    client = datasets_for(target, key := create_tenant(target, "acme"))
    name = _manual_version(client, "partial", tamper=False)  # uploaded, never committed: a "crash"
    running.stop(grace=0)
    objects = home / "objects" / "umbra-acme" / "datasets" / "partial"
    assert any(objects.rglob("*.tar"))

    running = start_coordinator(home, UMBRA_UPLOAD_TTL_SECONDS=0)  # restart: abandoned uploads are swept
    target = f"127.0.0.1:{running.port}"
    client = datasets_for(target, key)
    try:
        assert client.stub.GetDataset(ds.GetDatasetRequest(name="datasets/partial"),
                                      timeout=10).dataset.latest_version == 0
        with pytest.raises(grpc.RpcError) as err:
            client.stub.GetDatasetVersion(ds.GetDatasetVersionRequest(name=name), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert not any(objects.rglob("*.tar"))
    finally:
        running.stop(grace=0)


def test_chunk_uploads_are_checked(coordinator):
    _, target = coordinator
    client = datasets_for(target, create_tenant(target, "acme"))
    client.ensure("chunks")
    created = client.stub.CreateDatasetVersion(ds.CreateDatasetVersionRequest(parent="datasets/chunks",
                                                                              shard_count=1), timeout=10)
    version = created.dataset_version.name
    bad = [ds.UploadDatasetChunkRequest(dataset_version=version, shard="shard-000000.tar", offset=0, data=b"abc"),
           ds.UploadDatasetChunkRequest(dataset_version=version, shard="shard-000000.tar", offset=5, data=b"def")]
    for messages, field in ((bad, "offset"),
                            ([ds.UploadDatasetChunkRequest(dataset_version=version, shard="../../etc", data=b"x")],
                             "shard"),
                            ([ds.UploadDatasetChunkRequest(dataset_version=version, shard="shard-000001.tar",
                                                           data=b"x", sha256="0" * 64)], "shard"),
                            ([ds.UploadDatasetChunkRequest(dataset_version=version, shard="shard-000000.tar",
                                                           data=b"x", sha256="0" * 64)], "sha256")):
        with pytest.raises(grpc.RpcError) as err:
            client.stub.UploadDatasetChunk(iter(messages), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert status_details(err.value)["fields"] == [field]
    assert UmbraRpcError.from_rpc_error(err.value).field == "sha256"


def test_datasets_list_in_pages(coordinator):
    _, target = coordinator
    client = datasets_for(target, create_tenant(target, "acme"))
    for name in ("one", "two", "three"):
        client.ensure(f"set-{name}")
    seen, token = [], ""
    while True:
        page = client.stub.ListDatasets(ds.ListDatasetsRequest(page_size=1, page_token=token), timeout=10)
        assert len(page.datasets) <= 1
        seen += [d.name for d in page.datasets]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["datasets/set-one", "datasets/set-three", "datasets/set-two"]
