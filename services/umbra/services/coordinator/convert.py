"""Rows of the coordinator's database to protobuf messages (the only place the two meet)."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from umbra.common.v1 import privacy_pb2, refs_pb2
from umbra.coordinator.v1 import dataset_service_pb2 as ds
from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.coordinator.v1 import ledger_service_pb2 as ls
from umbra.coordinator.v1 import model_service_pb2 as ms
from umbra.coordinator.v1 import tenant_service_pb2 as ts
from umbra.inference import publications
from umbra.privacy.ledger import Balance, Entry
from umbra.privacy.policy import Policy
from umbra.services.convert import budget_to_proto, privacy_cost_to_proto
from umbra.services.coordinator.db import DatasetRow, TenantRow, VersionRow
from umbra.storage import keys


def timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    ts_ = timestamp_pb2.Timestamp()
    ts_.FromNanoseconds(int(seconds * 1e9))
    return ts_


def tenant_to_proto(row: TenantRow) -> ts.Tenant:
    return ts.Tenant(
        name=f"tenants/{row.id}", display_name=row.display_name,
        state=ts.Tenant.STATE_ACTIVE if row.state == "ACTIVE" else ts.Tenant.STATE_DELETED,
        privacy_budget=privacy_pb2.PrivacyBudget(epsilon=row.budget_epsilon, delta=row.budget_delta),
        bucket=keys.bucket(row.id), create_time=timestamp(row.create_time))


def api_key_to_proto(tenant: str, key_id: str, display_name: str, create_time: float,
                     revoke_time: float | None) -> ts.ApiKey:
    return ts.ApiKey(name=f"tenants/{tenant}/apiKeys/{key_id}", display_name=display_name,
                     create_time=timestamp(create_time), revoke_time=timestamp(revoke_time))


def dataset_to_proto(row: DatasetRow) -> ds.Dataset:
    return ds.Dataset(name=f"datasets/{row.id}", display_name=row.display_name, description=row.description,
                      latest_version=row.latest_version, create_time=timestamp(row.create_time))


_STATES = {"UPLOADING": ds.DatasetVersion.STATE_UPLOADING, "COMMITTING": ds.DatasetVersion.STATE_COMMITTING,
           "COMMITTED": ds.DatasetVersion.STATE_COMMITTED, "FAILED": ds.DatasetVersion.STATE_FAILED}
_ORIGINS = {"UPLOAD": ds.DatasetVersion.ORIGIN_UPLOAD, "ANONYMIZED": ds.DatasetVersion.ORIGIN_ANONYMIZED,
            "DISTORTED": ds.DatasetVersion.ORIGIN_DISTORTED}


def version_to_proto(row: VersionRow, bucket: str) -> ds.DatasetVersion:
    stats = row.stats
    msg = ds.DatasetVersion(
        name=f"datasets/{row.dataset}/versions/{row.version}", state=_STATES[row.state], origin=_ORIGINS[row.origin],
        sample_count=stats.get("samples", 0), shard_count=stats.get("shards", row.shard_count),
        size_bytes=stats.get("size_bytes", 0), label_columns=stats.get("label_columns", []),
        attribute_columns=stats.get("attribute_columns", []), split_counts=stats.get("split_counts", {}),
        image_size=stats.get("image_size", 0), create_time=timestamp(row.create_time),
        commit_time=timestamp(row.commit_time))
    if row.state == "COMMITTED":
        msg.manifest.CopyFrom(refs_pb2.ObjectRef(bucket=bucket, key=keys.manifest(row.dataset, row.version),
                                                 sha256=stats.get("manifest_sha256", "")))
    return msg


_CHARGE_STATES = {"RESERVED": privacy_pb2.PRIVACY_CHARGE_STATE_RESERVED,
                  "COMMITTED": privacy_pb2.PRIVACY_CHARGE_STATE_COMMITTED,
                  "RELEASED": privacy_pb2.PRIVACY_CHARGE_STATE_RELEASED}


def ledger_entry_to_proto(entry: Entry) -> privacy_pb2.PrivacyLedgerEntry:
    return privacy_pb2.PrivacyLedgerEntry(
        name=f"ledger/entries/{entry.id}", dataset=f"datasets/{entry.dataset}",
        cost=privacy_cost_to_proto(entry.cost), spent_by=entry.spent_by, create_time=timestamp(entry.create_time),
        state=_CHARGE_STATES[entry.state], request_id=entry.request_id, update_time=timestamp(entry.update_time))


def balance_to_proto(balance: Balance) -> ls.GetPrivacyBalanceResponse:
    return ls.GetPrivacyBalanceResponse(
        budget=budget_to_proto(balance.budget), spent=privacy_cost_to_proto(balance.spent),
        remaining=budget_to_proto(balance.remaining), spent_basic=privacy_cost_to_proto(balance.spent_basic),
        reserved_entries=balance.reserved_entries, committed_entries=balance.committed_entries)


_PUBLICATION_STATES = {publications.SERVING: ms.Publication.STATE_SERVING,
                       publications.LOADING: ms.Publication.STATE_LOADING,
                       publications.FAILED: ms.Publication.STATE_FAILED}


def publication_to_proto(publication: publications.Publication, state: str, endpoint: str,
                         image_size: int = 0) -> ms.Publication:
    return ms.Publication(
        name=f"publications/{publication.served_model_name}",
        model=refs_pb2.ModelRef(model=f"models/{publication.model}", version=publication.version),
        state=_PUBLICATION_STATES[state], endpoint=endpoint, served_model_name=publication.triton_name,
        create_time=timestamp(publication.create_time or None), image_size=image_size)


def policy_from_proto(message: js.ReleasePolicy) -> Policy:
    """A job spec's ReleasePolicy as umbra.privacy.policy reads it (unset optional limits: no criterion)."""
    return Policy(
        max_reidentification=message.max_reidentification if message.HasField("max_reidentification") else None,
        max_adversary_advantage=dict(message.max_adversary_advantage),
        min_kept_utility=dict(message.min_kept_utility),
        max_epsilon=message.max_epsilon if message.HasField("max_epsilon") else None)


def criterion_to_proto(criterion: dict) -> js.PolicyCriterion:
    """A criterion as umbra.privacy.policy.Criterion.to_dict wrote it (in a round's record or the report)."""
    value = criterion.get("value")
    return js.PolicyCriterion(name=criterion["name"], attribute=criterion.get("attribute", ""),
                              value=float("nan") if value is None else value, limit=criterion["limit"],
                              met=criterion["met"], comparison=criterion["comparison"],
                              faces=criterion.get("faces", 0), summary=criterion["summary"])
