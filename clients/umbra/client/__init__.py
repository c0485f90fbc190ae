"""Umbra's Python SDK. Installs without torch."""

from umbra.client.client import Client, health_of
from umbra.client.errors import OperationFailed, UmbraRpcError

__all__ = ["Client", "OperationFailed", "UmbraRpcError", "health_of"]
