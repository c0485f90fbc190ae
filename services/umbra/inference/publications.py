"""What the inference server serves: one small JSON entry per published model version, in a serving bucket of
the object store. The coordinator's ModelService (PublishModel, DeletePublication), its TenantService (DeleteTenant
withdraws all of a tenant's) and the training service's ExportModelVersion write and remove entries, all through
this module; the inference server (umbra.inference.triton) reads them, loads each model version from its tenant's
registry (checksums verified) and serves it under its Triton name, and unloads what is withdrawn. Only the
coordinator's ModelService.Predict may call it (umbra.inference.access). Torch-free: the coordinator imports it.

    umbra--serving/entries/<tenant>.<served_model_name>.json    {"tenant", "model", "version", ...}
    umbra--serving/failures/<tenant>.<served_model_name>.json   why the inference server could not load it
    umbra--serving/withdrawn/<tenant>.<served_model_name>.json  the request_id of the last withdrawal

The bucket name cannot be a tenant's (tenant ids never start with '-', so no `umbra-<tenant>` is
`umbra--serving`). A Triton name is `<tenant>.<served_model_name>`: tenants cannot take each other's names.
A served name stays bound to the model version it was first published with; publishing another version needs
another name (Triton would otherwise switch callers to different weights under their feet), or withdrawing the
publication first. The coordinator's publication `publications/{id}` is the entry whose served name is `id`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

from umbra.classifiers.catalog import ModelCatalog
from umbra.client import inference
from umbra.runtime.auth import validate_tenant_id
from umbra.runtime.errors import AlreadyExists, FailedPrecondition, NotFound, Unavailable
from umbra.runtime.names import validate_resource_id
from umbra.storage import keys
from umbra.storage.base import ObjectStore

SERVING_BUCKET = "umbra--serving"
_PREFIX = "entries/"
_FAILURES = "failures/"
_WITHDRAWN = "withdrawn/"

SERVING, LOADING, FAILED = "SERVING", "LOADING", "FAILED"  # what `states` reports


@dataclass(frozen=True)
class Publication:
    tenant: str
    served_model_name: str
    model: str
    version: int
    create_time: float = 0.0  # seconds since the epoch (0: an entry written before it was recorded)
    request_id: str = ""  # the request that published it, so that its retry is not refused as a second one

    @property
    def triton_name(self) -> str:
        return triton_name(self.tenant, self.served_model_name)

    def serves(self, model: str, version: int) -> bool:
        return (self.model, self.version) == (model, version)


def triton_name(tenant: str, served_model_name: str) -> str:
    return f"{validate_tenant_id(tenant)}.{validate_resource_id(served_model_name, 'served_model_name')}"


def _key(prefix: str, tenant: str, served_model_name: str) -> str:
    return f"{prefix}{triton_name(tenant, served_model_name)}.json"


def _read(store: ObjectStore, key: str) -> Publication:
    data = json.loads(store.get(SERVING_BUCKET, key))
    return Publication(**{k: v for k, v in data.items() if k in Publication.__dataclass_fields__})


def get(store: ObjectStore, tenant: str, served_model_name: str) -> Publication:
    try:
        return _read(store, _key(_PREFIX, tenant, served_model_name))
    except NotFound:
        raise NotFound("publication", f"publications/{served_model_name}") from None


def _find(store: ObjectStore, tenant: str, served_model_name: str) -> Publication | None:
    try:
        return get(store, tenant, served_model_name)
    except NotFound:
        return None


def publish(store: ObjectStore, tenant: str, served_model_name: str, model: str, version: int, *,
            request_id: str | None = None, field: str = "served_model_name") -> Publication:
    """Records that `models/<model>/versions/<version>` of `tenant` is to be served as `served_model_name`.

    The model version must be a classifier of the tenant (NotFound otherwise, also for another tenant's). A name
    already taken is AlreadyExists (naming `field`), except for the same publication again: with `request_id`
    None (ExportModelVersion) the same version is a no-op; with a request_id (PublishModel) only a retry of the
    request that made it is (an empty request_id is never a retry)."""
    ModelCatalog(store).get(keys.bucket(tenant), model, version)  # NotFound, also for another tenant's model
    current = _find(store, tenant, served_model_name)
    if current is not None:
        if current.serves(model, version) and (request_id is None or (request_id and
                                                                      current.request_id == request_id)):
            return current
        if not current.serves(model, version):
            raise AlreadyExists(
                f"{field} {served_model_name!r} already serves models/{current.model}/versions/{current.version}; "
                f"publish models/{model}/versions/{version} under another name, or withdraw it first",
                metadata={"field": field})
        raise AlreadyExists(f"{field} {served_model_name!r} is already published (models/{model}/versions/"
                            f"{version}); a retry must repeat its request_id", metadata={"field": field})
    wanted = Publication(tenant, served_model_name, model, version, time.time(), request_id or "")
    store.ensure_bucket(SERVING_BUCKET)
    store.delete(SERVING_BUCKET, _key(_FAILURES, tenant, served_model_name))  # a failure of an earlier entry
    store.put(SERVING_BUCKET, _key(_PREFIX, tenant, served_model_name),
              json.dumps(asdict(wanted), sort_keys=True).encode(), content_type="application/json")
    return wanted


def withdraw(store: ObjectStore, tenant: str, served_model_name: str, *, request_id: str = "") -> Publication | None:
    """Removes the publication (the inference server unloads it at its next look); NotFound when there is none.
    A retry of a withdrawal (the same non-empty request_id as the last one) is a no-op and returns None."""
    done_key = _key(_WITHDRAWN, tenant, served_model_name)
    if request_id:
        try:
            if json.loads(store.get(SERVING_BUCKET, done_key)).get("request_id") == request_id:
                return None
        except NotFound:
            pass
    current = get(store, tenant, served_model_name)
    store.delete(SERVING_BUCKET, _key(_PREFIX, tenant, served_model_name))
    store.delete(SERVING_BUCKET, _key(_FAILURES, tenant, served_model_name))
    if request_id:
        store.put(SERVING_BUCKET, done_key, json.dumps({"request_id": request_id, "time": time.time()}).encode(),
                  content_type="application/json")
    return current


def withdraw_tenant(store: ObjectStore, tenant: str) -> int:
    """Withdraws every publication of `tenant` (its deletion); how many there were."""
    count, after = 0, None
    while found := list_tenant(store, tenant, after, 100):
        after = found[-1].served_model_name
        for publication in found:
            try:
                withdraw(store, tenant, publication.served_model_name)
                count += 1
            except NotFound:
                pass  # withdrawn meanwhile (DeletePublication, another coordinator replica)
    return count


def list_tenant(store: ObjectStore, tenant: str, after: str | None, limit: int) -> list[Publication]:
    """Up to `limit` publications of `tenant` whose served name sorts after `after` (None: from the first)."""
    prefix = f"{_PREFIX}{validate_tenant_id(tenant)}."
    found = []
    for info in sorted(store.list(SERVING_BUCKET, prefix), key=lambda i: i.key):
        name = info.key[len(prefix):].removesuffix(".json")
        if not info.key.endswith(".json") or (after is not None and name <= after):
            continue
        try:
            found.append(_read(store, info.key))
        except NotFound:
            continue  # withdrawn between the listing and the read
        if len(found) >= limit:
            break
    return found


def list_all(store: ObjectStore) -> Iterator[tuple[Publication, str]]:
    """Every publication with its entry's etag (to notice a changed entry), in key order; none before the first
    publication has made the bucket."""
    for info in sorted(store.list(SERVING_BUCKET, _PREFIX), key=lambda i: i.key):
        if info.key.endswith(".json"):
            try:
                yield _read(store, info.key), info.etag or info.sha256
            except NotFound:
                continue  # withdrawn between the listing and the read


# -- what the inference server does with them -----------------------------------------------------------------


def record_failure(store: ObjectStore, publication: Publication, error: str) -> None:
    """The inference server could not load `publication` (written by the inference server)."""
    store.put(SERVING_BUCKET, _key(_FAILURES, publication.tenant, publication.served_model_name),
              json.dumps({"error": error[:2000], "time": time.time()}).encode(), content_type="application/json")


def failure(store: ObjectStore, publication: Publication) -> str | None:
    """Why the inference server could not load `publication`, or None (loaded, or not tried yet)."""
    try:
        data = json.loads(store.get(SERVING_BUCKET, _key(_FAILURES, publication.tenant,
                                                          publication.served_model_name)))
    except NotFound:
        return None
    return str(data.get("error", "unknown error"))


def states(store: ObjectStore, url: str, found: Sequence[Publication]) -> list[str]:
    """SERVING, FAILED or LOADING for each publication: SERVING when the inference server at `url` answers that it
    serves it now, FAILED when the server recorded that it could not load it, LOADING otherwise (not loaded yet,
    no inference server configured or reachable)."""
    ready = (inference.readiness(url, [p.triton_name for p in found]) if url and found else None) or {}
    return [SERVING if ready.get(p.triton_name) else FAILED if failure(store, p) is not None else LOADING
            for p in found]


def wait_until_served(store: ObjectStore, url: str, publication: Publication, timeout: float, *,
                      check: Callable[[], None] = lambda: None, poll_seconds: float = 0.25) -> None:
    """Returns once the inference server at `url` serves `publication`. FailedPrecondition (PUBLICATION_FAILED)
    when the server could not load it, Unavailable when it has not within `timeout` seconds; `check` is called
    between polls (to raise on cancellation)."""
    name = publication.triton_name
    deadline = time.monotonic() + timeout
    while True:
        check()
        if (inference.readiness(url, [name]) or {}).get(name):
            return
        error = failure(store, publication)
        if error is not None:
            raise FailedPrecondition(f"the inference server could not load {name} (models/{publication.model}/"
                                     f"versions/{publication.version}): {error}", reason="PUBLICATION_FAILED")
        if time.monotonic() > deadline:
            raise Unavailable(f"the inference server at {url} did not load {name} within {timeout:.0f} s; the "
                              f"publication is recorded and will be served when it does (see the inference "
                              f"server's log)")
        time.sleep(poll_seconds)


def wait_until_withdrawn(url: str, name: str, timeout: float, poll_seconds: float = 0.25) -> bool:
    """True once the inference server at `url` no longer serves the Triton model `name` (or cannot be reached);
    False if it still does after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (inference.readiness(url, [name]) or {}).get(name):
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_seconds)
    return True
