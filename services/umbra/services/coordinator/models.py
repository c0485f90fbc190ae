"""ModelService: publishes the calling tenant's model versions to the inference server (Triton), and gets, lists
and withdraws the publications.

A publication `publications/{id}` is the inference server's entry for the served name `id`
(umbra.inference.publications: the same entries, and the same code, as the training service's
ExportModelVersion). Triton serves it as `<tenant>.<id>` at `inference_url` (UMBRA_INFERENCE_URL); the model
version is read from the tenant's registry in the coordinator's object store. Its state is what the inference
server says now: SERVING, FAILED (it could not load it) or LOADING.

Predict is the only way to a publication's model: the inference server answers no one but the coordinator
(umbra.inference.access: Triton's restricted protocols, with a token derived from the service credential), and the
coordinator answers only the publication's tenant. The interceptor has checked the caller's API key; the
publication is looked up under that tenant only (another tenant's is NOT_FOUND, as for GetPublication), then the
images go to Triton's `<tenant>.<id>` through one connection per process (umbra.inference.gateway).
"""

from __future__ import annotations

import math
import secrets
import time

import numpy as np

from umbra.coordinator.v1 import model_service_pb2 as ms
from umbra.coordinator.v1 import model_service_pb2_grpc
from umbra.classifiers.catalog import ModelCatalog
from umbra.inference import access, publications
from umbra.inference.gateway import Gateway
from umbra.runtime import auth, names, pagination
from umbra.runtime.errors import FailedPrecondition, InvalidInput, Unavailable, UmbraError
from umbra.runtime.operations import LongRunning, OperationContext, OperationRunner
from umbra.services.coordinator import convert
from umbra.storage import keys
from umbra.storage.base import ObjectStore

KIND = "PublishModel"
MAX_REQUEST_ID = 200
READY_TIMEOUT = 120.0  # how long PublishModel waits for the inference server to load the model
WITHDRAW_TIMEOUT = 30.0  # how long DeletePublication waits for it to unload it
# How long Predict trusts a publication it has looked up (saves reading its entry from the object store on every
# call). A withdrawal by another coordinator replica shows within this, and Triton unloads the model anyway.
PUBLICATION_CACHE_SECONDS = 2.0
_PUBLICATION_CACHE_MAX = 4096


def _tenant() -> str:
    return auth.require_tenant("publications belong to a tenant: call with a tenant API key")


def _request_id(value: str) -> str:
    if len(value) > MAX_REQUEST_ID:
        raise InvalidInput("request_id", f"must be at most {MAX_REQUEST_ID} characters")
    return value


def _images_from_proto(tensor: ms.Tensor, field: str = "inputs") -> np.ndarray:
    """The float32 (N, 3, H, W) array a Tensor holds, sharing its bytes (no copy)."""
    shape = tuple(tensor.shape)
    if len(shape) != 4 or shape[1] != 3 or min(shape) <= 0:
        raise InvalidInput(f"{field}.shape", f"must be (N, 3, H, W) with every dimension positive, got {list(shape)}")
    size = 4 * math.prod(shape)
    if len(tensor.float32_data) != size:
        raise InvalidInput(f"{field}.float32_data", f"must hold {size} bytes (4 per float32 value of shape "
                                                    f"{list(shape)}), got {len(tensor.float32_data)}")
    return np.frombuffer(tensor.float32_data, dtype="<f4").reshape(shape)


def _tensor_to_proto(array: np.ndarray) -> ms.Tensor:
    return ms.Tensor(shape=array.shape, float32_data=np.ascontiguousarray(array, dtype="<f4").tobytes())


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, store: ObjectStore, operations: OperationRunner, *, inference_url: str, service_token: str,
                 ready_timeout: float = READY_TIMEOUT, withdraw_timeout: float = WITHDRAW_TIMEOUT):
        self.store, self.operations, self.inference_url = store, operations, inference_url
        self.ready_timeout, self.withdraw_timeout = ready_timeout, withdraw_timeout
        # One connection to the inference server for every RPC thread of this process.
        self._gateway = Gateway(inference_url, access.access_token(service_token)) if inference_url else None
        self._recent: dict[tuple[str, str], tuple[publications.Publication, float]] = {}
        self._publish = LongRunning(operations, KIND, ms.PublishModelRequest, ms.PublishModelMetadata,
                                    plan=self._plan_publish, run=self._run_publish)

    def _no_server(self) -> FailedPrecondition:
        return FailedPrecondition("no inference server is configured for the coordinator (UMBRA_INFERENCE_URL)")

    # -- PublishModel -----------------------------------------------------------------------------------------

    def PublishModel(self, request, context):
        tenant = _tenant()
        earlier = self.operations.find(tenant, KIND, _request_id(request.request_id))
        if earlier is not None:  # a retry: the operation it started (an interrupted one does not count)
            return ms.PublishModelResponse(operation=earlier)
        if not request.request_id:
            # The entry records the request that made it, so that a retry, or this operation resumed after a
            # restart, is told apart from a second publication under the same id (ALREADY_EXISTS).
            given, request = request, ms.PublishModelRequest()
            request.CopyFrom(given)
            request.request_id = f"auto-{secrets.token_hex(16)}"
        return ms.PublishModelResponse(operation=self._publish.start(tenant, request))

    def _plan_publish(self, tenant: str, request: ms.PublishModelRequest) -> publications.Publication:
        publication_id = names.validate_resource_id(request.publication_id, "publication_id")
        model, version = names.model_ref(request.model, "model")
        if not self.inference_url:
            raise self._no_server()
        # Recorded here, before the operation starts, so that a taken id is refused at once; idempotent for the
        # same request (a resumed operation plans again).
        return publications.publish(self.store, tenant, publication_id, model, version,
                                    request_id=request.request_id, field="publication_id")

    def _run_publish(self, ctx: OperationContext, publication: publications.Publication) -> ms.Publication:
        ctx.report(stage="loading", message=f"waiting for the inference server to serve {publication.triton_name}")
        publications.wait_until_served(self.store, self.inference_url, publication, self.ready_timeout,
                                       check=ctx.check_cancelled)
        return convert.publication_to_proto(publication, publications.SERVING, self.inference_url,
                                            self._image_size(publication))

    # -- publications -----------------------------------------------------------------------------------------

    def _to_proto(self, found: list[publications.Publication]) -> list[ms.Publication]:
        states = publications.states(self.store, self.inference_url, found)
        return [convert.publication_to_proto(p, s, self.inference_url, self._image_size(p))
                for p, s in zip(found, states, strict=True)]

    def _image_size(self, publication: publications.Publication) -> int:
        """The image side the published version takes (its config in the tenant's registry); 0 if unreadable."""
        try:
            stored = ModelCatalog(self.store).get(keys.bucket(publication.tenant), publication.model,
                                                  publication.version)
        except UmbraError:
            return 0
        return int(stored.config.image_size)

    def GetPublication(self, request, context):
        tenant = _tenant()
        publication = publications.get(self.store, tenant, names.publication(request.name))
        return ms.GetPublicationResponse(publication=self._to_proto([publication])[0])

    def ListPublications(self, request, context):
        tenant = _tenant()
        found, token = pagination.page(
            request, "publications", lambda after, limit: publications.list_tenant(self.store, tenant, after, limit),
            lambda p: p.served_model_name)
        return ms.ListPublicationsResponse(publications=self._to_proto(found), next_page_token=token)

    def DeletePublication(self, request, context):
        """Withdraws the publication and returns once the inference server no longer serves it. A retry with the
        same request_id after it is withdrawn answers OK again (without one: NOT_FOUND)."""
        tenant = _tenant()
        publication_id = names.publication(request.name)
        withdrawn = publications.withdraw(self.store, tenant, publication_id,
                                          request_id=_request_id(request.request_id))
        self._recent.pop((tenant, publication_id), None)  # this replica's Predict stops at once
        if withdrawn is not None and self.inference_url and not publications.wait_until_withdrawn(
                self.inference_url, withdrawn.triton_name, self.withdraw_timeout):
            raise Unavailable(f"{request.name} is withdrawn, but the inference server at {self.inference_url} "
                              f"still served {withdrawn.triton_name} after {self.withdraw_timeout:.0f} s; it stops "
                              f"at its next look at the publications (see its log)")
        return ms.DeletePublicationResponse()

    # -- Predict ----------------------------------------------------------------------------------------------

    def _publication(self, tenant: str, publication_id: str) -> publications.Publication:
        """The tenant's publication (NotFound also for another tenant's), from a short-lived cache."""
        key, now = (tenant, publication_id), time.monotonic()
        hit = self._recent.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        publication = publications.get(self.store, tenant, publication_id)
        if len(self._recent) >= _PUBLICATION_CACHE_MAX:
            self._recent.clear()
        self._recent[key] = (publication, now + PUBLICATION_CACHE_SECONDS)
        return publication

    def Predict(self, request, context):
        tenant = _tenant()
        publication = self._publication(tenant, names.publication(request.name))
        images = _images_from_proto(request.inputs)
        if self._gateway is None:
            raise self._no_server()
        remaining = context.time_remaining()
        logits = self._gateway.predict(publication.triton_name, images, what=request.name,
                                       timeout=remaining if remaining is not None and remaining > 0 else None)
        return ms.PredictResponse(outputs=_tensor_to_proto(logits))
