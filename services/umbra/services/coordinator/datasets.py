"""DatasetService: the calling tenant's datasets and their immutable versions.

Upload: CreateDatasetVersion gives one target per shard plus one for the manifest (presigned PUT URLs when
the store has them; otherwise the client streams through UploadDatasetChunk), all in the version's staging
area. CommitDatasetVersion closes uploads, copies the staged shards, checks the copies against the manifest
(every image decoded) and then writes the final manifest: the moment the version becomes visible. The races
between uploads, commits and deletion are settled by one lock per dataset (versions.py, locks.py).
"""

from __future__ import annotations

import contextlib
import logging
import time

from umbra.coordinator.v1 import dataset_service_pb2 as ds
from umbra.coordinator.v1 import dataset_service_pb2_grpc
from umbra.common.v1 import refs_pb2
from umbra.dataset import manifest as mf
from umbra.runtime import auth, names, pagination
from umbra.runtime.errors import AlreadyExists, FailedPrecondition, InvalidInput, NotFound
from umbra.runtime.operations import OperationRunner
from umbra.services.coordinator import convert, versions
from umbra.services.coordinator.db import CoordinatorDB, DatasetRow, VersionRow
from umbra.services.coordinator.locks import DatasetLocks
from umbra.storage import datasets as stored, keys
from umbra.storage.base import ObjectStore

log = logging.getLogger(__name__)
MAX_SHARDS = 100_000
MANIFEST = "manifest"


def _tenant() -> str:
    return auth.require_tenant("datasets belong to a tenant: call with a tenant API key")


def _text(value: str, field: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidInput(field, f"must be at most {limit} characters")
    return value


class DatasetServicer(dataset_service_pb2_grpc.DatasetServiceServicer):
    def __init__(self, db: CoordinatorDB, store: ObjectStore, operations: OperationRunner, locks: DatasetLocks, *,
                 presign_seconds: int):
        self.db, self.store, self.operations, self.locks = db, store, operations, locks
        self.presign_seconds = presign_seconds

    # -- datasets ---------------------------------------------------------------------------------------------

    def _dataset(self, tenant: str, name: str, field: str = "name") -> DatasetRow:
        dataset = names.dataset(name, field)
        row = self.db.dataset(tenant, dataset)
        if row is None:
            raise NotFound("dataset", name)
        return row

    def CreateDataset(self, request, context):
        tenant = _tenant()
        dataset = keys.validate_resource_id(request.dataset_id, "dataset_id")
        row = DatasetRow(tenant, dataset, _text(request.dataset.display_name or dataset, "dataset.display_name", 200),
                         _text(request.dataset.description, "dataset.description", 2000), time.time())
        created = self.db.insert_dataset(row, request.request_id)
        if created is None:
            raise AlreadyExists(f"dataset {dataset!r} already exists", metadata={"dataset": dataset})
        return ds.CreateDatasetResponse(dataset=convert.dataset_to_proto(created))

    def GetDataset(self, request, context):
        return ds.GetDatasetResponse(dataset=convert.dataset_to_proto(self._dataset(_tenant(), request.name)))

    def ListDatasets(self, request, context):
        tenant = _tenant()
        rows, token = pagination.page(request, "datasets",
                                      lambda after, limit: self.db.datasets(tenant, after or "", limit),
                                      lambda row: row.id)
        return ds.ListDatasetsResponse(datasets=[convert.dataset_to_proto(r) for r in rows], next_page_token=token)

    def DeleteDataset(self, request, context):
        tenant = _tenant()
        row = self._dataset(tenant, request.name)
        with self.locks.exclusive(tenant, row.id):  # waits for writes landing now; later ones find no version
            self.db.delete_dataset(tenant, row.id)  # invisible from here on; a commit under way stops
            removed = self.store.delete_prefix(keys.bucket(tenant), keys.dataset_prefix(row.id))
        log.info("dataset %s deleted (%d objects)", row.id, removed)
        return ds.DeleteDatasetResponse()

    # -- versions ---------------------------------------------------------------------------------------------

    def _version(self, tenant: str, name: str, field: str = "name") -> VersionRow:
        dataset, number = names.dataset_version(name, field)
        row = self.db.version(tenant, dataset, number)
        if row is None:
            raise NotFound("dataset version", name)
        return row

    def _target(self, tenant: str, key: str, shard: str, *, upload: bool = True) -> ds.UploadTarget:
        """Where to PUT (upload) or GET one object: a presigned URL, or none (then stream through us)."""
        url = ""
        if self.store.presigns:
            presign = self.store.presign_put if upload else self.store.presign_get
            url = presign(keys.bucket(tenant), key, self.presign_seconds) or ""
        target = ds.UploadTarget(shard=shard, url=url)
        if url:
            target.expire_time.FromSeconds(int(time.time()) + self.presign_seconds)
        return target

    def CreateDatasetVersion(self, request, context):
        tenant = _tenant()
        dataset = self._dataset(tenant, request.parent, "parent")
        if not 1 <= request.shard_count <= MAX_SHARDS:
            raise InvalidInput("shard_count", f"must be between 1 and {MAX_SHARDS}")
        self.store.ensure_bucket(keys.bucket(tenant))
        row, _ = self.db.new_version(tenant, dataset.id, request.shard_count, "UPLOAD", request.request_id)
        response = ds.CreateDatasetVersionResponse(dataset_version=convert.version_to_proto(row, keys.bucket(tenant)))
        if row.state not in ("UPLOADING", "FAILED"):  # a retry after the commit began: nothing left to upload
            return response
        return ds.CreateDatasetVersionResponse(
            dataset_version=response.dataset_version,
            shard_targets=[self._target(tenant, keys.upload_shard(row.dataset, row.version, mf.shard_name(i)),
                                        mf.shard_name(i)) for i in range(row.shard_count)],
            manifest_target=self._target(tenant, keys.upload_manifest(row.dataset, row.version), MANIFEST))

    def _shard(self, row: VersionRow, shard: str, field: str) -> str:
        """`shard` checked against the version: 'manifest' or one of its shard names."""
        if shard != MANIFEST and (not mf.SHARD.fullmatch(shard) or int(shard[6:12]) >= row.shard_count):
            raise InvalidInput(field, f"must be 'manifest' or one of shard-000000.tar … "
                                      f"{mf.shard_name(row.shard_count - 1)}")
        return shard

    def UploadDatasetChunk(self, request_iterator, context):
        tenant = _tenant()
        first = next(request_iterator, None)
        if first is None:
            raise InvalidInput("request", "the stream was empty")
        row = versions.require_state(self.db, self._version(tenant, first.dataset_version, "dataset_version"),
                                     versions.OPEN_FOR_UPLOAD)
        shard = self._shard(row, first.shard, "shard")
        key = (keys.upload_manifest(row.dataset, row.version) if shard == MANIFEST
               else keys.upload_shard(row.dataset, row.version, shard))
        with contextlib.ExitStack() as landing:

            def land() -> None:  # every byte arrived and matched its SHA-256: the write lands now, or never
                landing.enter_context(self.locks.shared(tenant, row.dataset))
                versions.require_state(self.db, row, versions.OPEN_FOR_UPLOAD)

            stream = versions.ChunkStream(first, request_iterator, land=land, max_bytes=(
                stored.MAX_MANIFEST_BYTES if shard == MANIFEST else versions.MAX_UPLOAD_BYTES))
            info = self.store.put_stream(keys.bucket(tenant), key, stream, sha256="")
        return ds.UploadDatasetChunkResponse(object=refs_pb2.ObjectRef(bucket=info.bucket, key=info.key,
                                                                       sha256=info.sha256, size_bytes=info.size))

    def CommitDatasetVersion(self, request, context):
        tenant = _tenant()
        row = self._version(tenant, request.name)
        kind = "CommitDatasetVersion"
        earlier = self.operations.find(tenant, kind, request.request_id)  # an interrupted one does not count
        if earlier is not None:
            return ds.CommitDatasetVersionResponse(operation=earlier)
        with self.locks.exclusive(tenant, row.dataset):  # uploads landing now finish first; later ones are refused
            if not self.db.set_version_state(tenant, row.dataset, row.version, "COMMITTING",
                                             expect=versions.OPEN_FOR_UPLOAD):
                now = self.db.version(tenant, row.dataset, row.version)
                if now is None:
                    raise NotFound("dataset version", request.name)
                raise FailedPrecondition(f"version {row.version} is {now.state.lower()}",
                                         reason="VERSION_NOT_UPLOADING")
        bucket = keys.bucket(tenant)

        def commit(ctx) -> ds.DatasetVersion:
            try:
                return versions.commit(ctx, self.db, self.store, self.locks, bucket, row, request.drop_invalid)
            except BaseException as exc:
                state = "UPLOADING" if ctx.cancelled else "FAILED"
                with self.locks.exclusive(tenant, row.dataset):
                    self.db.set_version_state(tenant, row.dataset, row.version, state, expect=("COMMITTING",),
                                              error=getattr(exc, "message", "internal error"))
                raise

        op = self.operations.start(kind=kind, tenant=tenant, metadata=ds.CommitDatasetVersionMetadata(), work=commit,
                                   request_id=request.request_id)
        return ds.CommitDatasetVersionResponse(operation=op)

    def GetDatasetVersion(self, request, context):
        tenant = _tenant()
        return ds.GetDatasetVersionResponse(
            dataset_version=convert.version_to_proto(self._version(tenant, request.name), keys.bucket(tenant)))

    def ListDatasetVersions(self, request, context):
        tenant = _tenant()
        dataset = self._dataset(tenant, request.parent, "parent")

        def fetch(after: str | None, limit: int) -> list[VersionRow]:
            return self.db.versions(tenant, dataset.id, pagination.integer_position(after), limit)

        rows, token = pagination.page(request, f"versions/{dataset.id}", fetch, lambda row: str(row.version))
        return ds.ListDatasetVersionsResponse(
            dataset_versions=[convert.version_to_proto(r, keys.bucket(tenant)) for r in rows], next_page_token=token)

    def _committed(self, tenant: str, name: str, field: str) -> VersionRow:
        row = self._version(tenant, name, field)
        if row.state != "COMMITTED":
            raise FailedPrecondition(f"version {row.version} is {row.state.lower()}, not committed",
                                     reason="VERSION_NOT_COMMITTED")
        return row

    def ExportDatasetVersion(self, request, context):
        tenant = _tenant()
        row = self._committed(tenant, request.name, "name")
        header = stored.DatasetReader(self.store, keys.bucket(tenant), row.dataset, row.version).header
        return ds.ExportDatasetVersionResponse(
            shard_sources=[self._target(tenant, keys.shard(row.dataset, row.version, s), s, upload=False)
                           for s in header.shards],
            manifest_source=self._target(tenant, keys.manifest(row.dataset, row.version), MANIFEST, upload=False))

    def DownloadDatasetChunk(self, request, context):
        tenant = _tenant()
        row = self._committed(tenant, request.dataset_version, "dataset_version")
        shard = self._shard(row, request.shard, "shard")
        key = (keys.manifest(row.dataset, row.version) if shard == MANIFEST
               else keys.shard(row.dataset, row.version, shard))
        return versions.download(self.store, keys.bucket(tenant), key)
