"""Which object store a service uses, from its configuration (umbra.runtime.config.StoreConfig)."""

from __future__ import annotations

from umbra.runtime.config import StoreConfig
from umbra.storage.base import ObjectStore


def open_store(config: StoreConfig) -> ObjectStore:
    if config.kind == "s3":
        from umbra.storage.s3 import S3ObjectStore

        return S3ObjectStore(config.endpoint, config.access_key, config.secret_key, secure=config.secure)
    from umbra.storage.local import LocalObjectStore

    return LocalObjectStore(config.root)
