"""Channels to Umbra's services: credentials on every call and retries with backoff on UNAVAILABLE.

Retries are gRPC's own (a retry policy in the channel's service config), so they apply to every method and
respect deadlines; a call is retried only when the server did not start processing it.
"""

from __future__ import annotations

import json

import grpc

RETRY_POLICY = {
    "methodConfig": [{
        "name": [{}],  # every service and method
        "retryPolicy": {
            "maxAttempts": 5,
            "initialBackoff": "0.2s",
            "maxBackoff": "5s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }]
}
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class _Metadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds fixed metadata (the credential, and for internal calls the tenant) to every call."""

    def __init__(self, pairs: tuple[tuple[str, str], ...]):
        self._pairs = pairs

    def _details(self, details):
        return details._replace(metadata=tuple(details.metadata or ()) + self._pairs)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


def open_channel(target: str, credential: str = "", *, tenant: str = "",
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> grpc.Channel:
    """A channel to `target` (host:port). `credential` is an API key, the admin key or, for internal calls,
    the service token; `tenant` names the tenant an internal call acts for."""
    options = [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(RETRY_POLICY)),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    channel = grpc.insecure_channel(target, options=options)
    pairs: list[tuple[str, str]] = []
    if credential:
        pairs.append(("authorization", f"Bearer {credential}"))
    if tenant:
        pairs.append(("x-umbra-tenant", tenant))
    return grpc.intercept_channel(channel, _Metadata(tuple(pairs))) if pairs else channel

