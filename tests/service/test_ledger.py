"""The coordinator's privacy ledger over real gRPC: two anonymizer processes charging one tenant budget, racing
reservations for the last of a budget, a failed job's reservation released, a retried request charged once, and
the balance composed tightly and by basic composition."""

from __future__ import annotations

import threading

import grpc
import pytest
from google.protobuf import field_mask_pb2

from support import (ADMIN_KEY, SERVICE_TOKEN, commit_faces, create_tenant, free_port, serve_process, start_service,
                     status_details)
from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
from umbra.anonymizer.v1 import anonymizer_service_pb2_grpc
from umbra.client.channel import open_channel
from umbra.client.datasets import DatasetsClient
from umbra.client.errors import OperationFailed
from umbra.client.operations import OperationsClient
from umbra.common.v1 import privacy_pb2, refs_pb2
from umbra.coordinator.v1 import dataset_service_pb2 as cds
from umbra.coordinator.v1 import dataset_service_pb2_grpc, tenant_service_pb2, tenant_service_pb2_grpc
from umbra.coordinator.v1 import ledger_service_pb2 as ls
from umbra.coordinator.v1 import ledger_service_pb2_grpc
from umbra.dataset import synthetic
from umbra.dataset.images import SizePolicy
from umbra.privacy import composition
from umbra.services.convert import privacy_cost_from_proto
from umbra.storage.datasets import DatasetReader
from umbra.storage.local import LocalObjectStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # fixture 420 s + 6 previews of 120 s
FACES = 12
GENERATOR = refs_pb2.ModelRef(model="models/public-gen", version=1)
FACES_V1 = refs_pb2.DatasetRef(dataset="datasets/faces", version=1)


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    """The coordinator, and two anonymizer processes (their own data folders, one object store) that charge it."""
    home = tmp_path_factory.mktemp("home")
    coordinator = start_service("coordinator", home, budget=(1e6, 0.5))
    faces = synthetic.write_folder(tmp_path_factory.mktemp("faces") / "faces", FACES, size=16, seed=3)
    DatasetsClient(coordinator.channel()).upload(faces, "faces", progress=False, policy=SizePolicy(size=16))
    store = LocalObjectStore(home / "objects")
    commit_faces(store, "umbra-acme", 16, dataset="public", size=16, seed=5)  # the generator's public data
    processes, targets = [], []
    for name in ("a", "b"):
        port = free_port()
        (home / name).mkdir()
        processes.append(serve_process("anonymizer", home / name, port, UMBRA_STORE_DIR=str(home / "objects"),
                                       UMBRA_COORDINATOR_URL=coordinator.target))
        targets.append(f"127.0.0.1:{port}")
    anonymizers = [open_channel(t, SERVICE_TOKEN, tenant="acme") for t in targets]
    stub = anonymizer_service_pb2_grpc.AnonymizerServiceStub(anonymizers[0])
    op = stub.TrainGenerator(an.TrainGeneratorRequest(  # public data, no DP: nothing to charge
        dataset=refs_pb2.DatasetRef(dataset="datasets/public", version=1), condition_attributes=["gender"],
        model="models/public-gen", image_size=16, epochs=1, batch_size=8, seed=1), timeout=60).operation
    OperationsClient(anonymizers[0]).result(op.name, an.GeneratorResult, poll_seconds=0.5, timeout=240)
    yield coordinator, anonymizers, store
    for proc in processes:
        proc.terminate()
        proc.wait(timeout=30)
    coordinator.running.stop(grace=0)


def ledger(coordinator) -> ledger_service_pb2_grpc.LedgerServiceStub:
    return ledger_service_pb2_grpc.LedgerServiceStub(coordinator.channel())


def set_budget(coordinator, tenant: str, epsilon: float, delta: float) -> None:
    stub = tenant_service_pb2_grpc.TenantServiceStub(open_channel(coordinator.target, ADMIN_KEY))
    stub.UpdateTenant(tenant_service_pb2.UpdateTenantRequest(
        tenant=tenant_service_pb2.Tenant(name=f"tenants/{tenant}", privacy_budget=privacy_pb2.PrivacyBudget(
            epsilon=epsilon, delta=delta)), update_mask=field_mask_pb2.FieldMask(paths=["privacy_budget"])),
        timeout=30)


def preview(channel, request_id: str, keys: list[str]) -> an.AnonymizeResponse:
    settings = an.AnonymizationSettings(generator=GENERATOR, protected_attributes=["gender"], intensity=0.9,
                                        steps=2, seed=2)
    return anonymizer_service_pb2_grpc.AnonymizerServiceStub(channel).Anonymize(
        an.AnonymizeRequest(settings=settings, dataset=FACES_V1, sample_keys=keys, request_id=request_id), timeout=120)


def test_two_anonymizer_processes_share_one_budget_and_a_retry_is_charged_once(system):
    coordinator, (a, b), store = system
    keys = [sample.key for sample in DatasetReader(store, "umbra-acme", "faces", 1).samples()][:2]
    preview(a, "preview-0", keys)
    preview(b, "preview-0", keys)  # the same request retried on the other replica: charged once
    entries = ledger(coordinator).ListLedgerEntries(ls.ListLedgerEntriesRequest(), timeout=30).entries
    assert len(entries) == 1 and entries[0].state == privacy_pb2.PRIVACY_CHARGE_STATE_COMMITTED
    charge = privacy_cost_from_proto(entries[0].cost)
    # a budget that holds exactly three such charges, composed tightly (μ-GDP for the images' noise)
    three, four = composition.tight([charge] * 3), composition.tight([charge] * 4)
    assert four.epsilon > three.epsilon
    set_budget(coordinator, "acme", (three.epsilon + four.epsilon) / 2, 0.5)
    preview(b, "preview-1", keys)
    preview(a, "preview-2", keys)
    for channel, request_id in ((b, "preview-3"), (a, "preview-4")):  # spent, whichever replica asks
        with pytest.raises(grpc.RpcError) as refused:
            preview(channel, request_id, keys)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = status_details(refused.value)
        assert details["reason"] == "PRIVACY_BUDGET_EXHAUSTED"
        assert float(details["metadata"]["remaining_epsilon"]) == pytest.approx((four.epsilon - three.epsilon) / 2)
    balance = ledger(coordinator).GetPrivacyBalance(ls.GetPrivacyBalanceRequest(), timeout=30)
    assert (balance.committed_entries, balance.reserved_entries) == (3, 0)
    assert balance.spent.epsilon == pytest.approx(three.epsilon, rel=1e-12)
    assert balance.spent_basic.epsilon == pytest.approx(3 * charge.epsilon, rel=1e-12)
    assert balance.spent_basic.epsilon > balance.spent.epsilon
    assert balance.spent.accountant == privacy_pb2.PRIVACY_ACCOUNTANT_TIGHT_COMPOSITION
    set_budget(coordinator, "acme", 1e6, 0.5)


def test_a_failed_job_releases_its_reservation(system):
    coordinator, (a, _), store = system
    for name in ("config.json", "record.json"):  # a generator whose weights are missing: the job fails at loading
        store.put("umbra-acme", f"models/broken-gen/v1/{name}", store.get("umbra-acme", f"models/public-gen/v1/{name}"))
    before = ledger(coordinator).GetPrivacyBalance(ls.GetPrivacyBalanceRequest(), timeout=30)
    reserved = dataset_service_pb2_grpc.DatasetServiceStub(coordinator.channel()).CreateDatasetVersion(
        cds.CreateDatasetVersionRequest(parent="datasets/faces", shard_count=1), timeout=30).dataset_version
    settings = an.AnonymizationSettings(generator=refs_pb2.ModelRef(model="models/broken-gen", version=1),
                                        protected_attributes=["gender"], intensity=0.9, steps=2, seed=2)
    number = int(reserved.name.rsplit("/", 1)[1])
    op = anonymizer_service_pb2_grpc.AnonymizerServiceStub(a).AnonymizeDataset(an.AnonymizeDatasetRequest(
        settings=settings, dataset=FACES_V1, output_dataset="datasets/faces",
        output_version=number, request_id="dataset-broken"), timeout=60).operation
    with pytest.raises(OperationFailed):
        OperationsClient(a).result(op.name, an.AnonymizationResult, poll_seconds=0.5, timeout=120)
    entry = next(e for e in ledger(coordinator).ListLedgerEntries(ls.ListLedgerEntriesRequest(), timeout=30).entries
                 if e.request_id.startswith(f"anonymizer/AnonymizeDataset/datasets/faces/versions/{number}/"))
    assert entry.state == privacy_pb2.PRIVACY_CHARGE_STATE_RELEASED
    after = ledger(coordinator).GetPrivacyBalance(ls.GetPrivacyBalanceRequest(), timeout=30)
    assert after.spent.epsilon == before.spent.epsilon and after.reserved_entries == 0


def reserve(coordinator, tenant: str, request_id: str, epsilon: float) -> ls.ReservePrivacyChargeResponse:
    stub = ledger_service_pb2_grpc.LedgerServiceStub(open_channel(coordinator.target, SERVICE_TOKEN, tenant=tenant))
    cost = privacy_pb2.PrivacyCost(mechanism=privacy_pb2.PRIVACY_MECHANISM_RANDOMIZED_RESPONSE, epsilon=epsilon,
                                   description="attribute gender")
    return stub.ReservePrivacyCharge(ls.ReservePrivacyChargeRequest(dataset="datasets/faces", cost=cost,
                                                                    request_id=request_id, spent_by="test"),
                                     timeout=60)


def test_eight_racing_reservations_for_the_last_of_a_budget_give_one_success(system):
    coordinator, _, _ = system
    key = create_tenant(coordinator.target, "racer", budget=(1.5, 1e-6))
    outcomes: list[str] = []

    def race(i: int) -> None:
        try:
            reserve(coordinator, "racer", f"race-{i}", 1.0)
            outcomes.append("reserved")
        except grpc.RpcError as exc:
            outcomes.append(status_details(exc).get("reason", exc.code().name))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(outcomes) == ["PRIVACY_BUDGET_EXHAUSTED"] * 7 + ["reserved"]
    balance = ledger_service_pb2_grpc.LedgerServiceStub(open_channel(coordinator.target, key)).GetPrivacyBalance(
        ls.GetPrivacyBalanceRequest(), timeout=30)
    assert (balance.spent.epsilon, balance.remaining.epsilon, balance.reserved_entries) == (1.0, 0.5, 1)


def test_the_ledger_refuses_tenants_writing_and_workers_reading(system):
    coordinator, _, _ = system
    tenant_stub = ledger(coordinator)  # a tenant API key may read its ledger, never charge or release it
    with pytest.raises(grpc.RpcError) as refused:
        tenant_stub.ReleasePrivacyCharge(ls.ReleasePrivacyChargeRequest(request_id="preview-1"), timeout=30)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as refused:
        reserve(coordinator, "acme", "", 1.0)
    assert status_details(refused.value)["fields"] == ["request_id"]
    with pytest.raises(grpc.RpcError) as refused:
        tenant_stub.GetPrivacyBalance(ls.GetPrivacyBalanceRequest(dataset="faces"), timeout=30)
    assert status_details(refused.value)["fields"] == ["dataset"]
