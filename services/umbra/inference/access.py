"""Who may call the inference server: only the coordinator, which checks each tenant's key first.

Triton's restricted protocols guard groups of its API with a required header. The inference server restricts every
group but `health` (RESTRICTED) to one secret, the access token, which only the coordinator holds: it is derived
from the service credential (UMBRA_SERVICE_TOKEN), HMAC-SHA256(service_token, "triton-inference") in hex, so no new
setting is needed and the service token itself never travels to Triton. Both sides call `access_token`: the
inference server (`python -m umbra.inference.triton`, which reads UMBRA_SERVICE_TOKEN at start) and the
coordinator's ModelService.Predict (umbra.inference.gateway). A call to Triton without the header is refused by
Triton itself. `health` stays open so that probes and the readiness polls of PublishModel, DeletePublication and
ExportModelVersion need no secret; it tells whether a name is loaded, nothing more (the chart's NetworkPolicy keeps
tenants off the port altogether).

One shared header is not a tenant's credential: it proves that the caller is the coordinator, and the coordinator
has already checked the tenant's API key and that the publication is the tenant's own.
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "triton-access-token"  # the header PyTriton's security config restricts with (its TRITON_ACCESS_HEADER)
GRPC_HEADER = f"triton-grpc-protocol-{HEADER}"  # how Triton's gRPC endpoint expects it (a prefix on the name)
# Every protocol Triton can restrict but health (PyTriton's defaults are the last five).
RESTRICTED = ("inference", "metadata", "model-config", "shared-memory", "model-repository", "statistics", "trace",
              "logging")
_PURPOSE = b"triton-inference"


def access_token(service_token: str) -> str:
    """The inference server's access token: HMAC-SHA256(service_token, "triton-inference"), 64 hex digits (no
    character that Triton's `<protocols>:<header>=<value>` setting would misread)."""
    if not service_token:
        raise ValueError("the inference server's access token is derived from the service token, which is empty")
    return hmac.new(service_token.encode(), _PURPOSE, hashlib.sha256).hexdigest()


def grpc_headers(token: str) -> dict[str, str]:
    """The gRPC metadata that opens the restricted protocols (tritonclient.grpc's `headers=`)."""
    return {GRPC_HEADER: token}
