"""What the inference server serves: one small JSON entry per published model version, in a serving bucket of
the object store. The training service writes entries (ExportModelVersion); the inference server reads them,
loads each model version from its tenant's registry (checksums verified) and serves it under its Triton name.

    umbra--serving/entries/<tenant>.<served_model_name>.json    {"tenant", "model", "version", ...}

The bucket name cannot be a tenant's (tenant ids never start with '-', so no `umbra-<tenant>` is
`umbra--serving`). A Triton name is `<tenant>.<served_model_name>`: tenants cannot take each other's names.
A served name stays bound to the model version it was first published with; publishing another version needs
another name (Triton would otherwise switch callers to different weights under their feet).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from umbra.classifiers.registry import ModelRegistry
from umbra.runtime.auth import validate_tenant_id
from umbra.runtime.errors import AlreadyExists, NotFound
from umbra.runtime.names import validate_resource_id
from umbra.storage import keys
from umbra.storage.base import ObjectStore

SERVING_BUCKET = "umbra--serving"
_PREFIX = "entries/"


@dataclass(frozen=True)
class Publication:
    tenant: str
    served_model_name: str
    model: str
    version: int

    @property
    def triton_name(self) -> str:
        return triton_name(self.tenant, self.served_model_name)


def triton_name(tenant: str, served_model_name: str) -> str:
    return f"{validate_tenant_id(tenant)}.{validate_resource_id(served_model_name, 'served_model_name')}"


def _key(tenant: str, served_model_name: str) -> str:
    return f"{_PREFIX}{triton_name(tenant, served_model_name)}.json"


def get(store: ObjectStore, tenant: str, served_model_name: str) -> Publication:
    try:
        data = json.loads(store.get(SERVING_BUCKET, _key(tenant, served_model_name)))
    except NotFound:
        raise NotFound("publication", served_model_name) from None
    return Publication(**data)


def publish(store: ObjectStore, tenant: str, served_model_name: str, model: str, version: int) -> Publication:
    """Records that `models/<model>/versions/<version>` of `tenant` is to be served as `served_model_name`.
    Publishing the same version again is a no-op; another version under a taken name is AlreadyExists."""
    wanted = Publication(tenant, served_model_name, model, version)
    store.ensure_bucket(SERVING_BUCKET)
    try:
        current = get(store, tenant, served_model_name)
    except NotFound:
        current = None
    if current is not None:
        if current == wanted:
            return current
        raise AlreadyExists(
            f"served_model_name {served_model_name!r} already serves models/{current.model}/versions/"
            f"{current.version}; publish models/{model}/versions/{version} under another name",
            metadata={"field": "served_model_name"})
    store.put(SERVING_BUCKET, _key(tenant, served_model_name), json.dumps(asdict(wanted), sort_keys=True).encode(),
              content_type="application/json")
    return wanted


def list_all(store: ObjectStore) -> Iterator[tuple[Publication, str]]:
    """Every publication with its entry's etag (to notice a changed entry), in key order; none before the first
    publication has made the bucket."""
    for info in sorted(store.list(SERVING_BUCKET, _PREFIX), key=lambda i: i.key):
        if info.key.endswith(".json"):
            try:
                yield Publication(**json.loads(store.get(SERVING_BUCKET, info.key))), info.etag or info.sha256
            except NotFound:
                continue  # withdrawn between the listing and the read


def load_weights(store: ObjectStore, publication: Publication):
    """(ModelConfig, state dict) of the published version, read from the tenant's registry."""
    registry = ModelRegistry(store)
    bucket = keys.bucket(publication.tenant)
    stored = registry.get(bucket, publication.model, publication.version)
    return stored.config, registry.weights(bucket, publication.model, publication.version)
