"""Object storage: one interface (`ObjectStore`), two backends (S3 through the `minio` client, and a local
directory), and the key layout built from validated ids only."""

from umbra.storage.base import ChecksumMismatch, ObjectInfo, ObjectStore
from umbra.storage.factory import open_store

__all__ = ["ChecksumMismatch", "ObjectInfo", "ObjectStore", "open_store"]
