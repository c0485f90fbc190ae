"""The object layout. Every key is built here from validated ids; nothing from a request is used verbatim.

    umbra-<tenant>/datasets/<dataset>/v<version>/manifest.jsonl           visible once written (last)
    umbra-<tenant>/datasets/<dataset>/v<version>/upload/manifest.jsonl    the client's, before commit
    umbra-<tenant>/datasets/<dataset>/v<version>/shards/shard-000000.tar
    umbra-<tenant>/datasets/<dataset>/v<version>/private/...            what made the version (e.g. the MDP start
                                                                         mapping); never exported with it
"""

from __future__ import annotations

import re

from umbra.dataset.manifest import SHARD
from umbra.runtime.auth import validate_tenant_id
from umbra.runtime.errors import InvalidInput
from umbra.runtime.names import validate_resource_id


def bucket(tenant: str) -> str:
    return f"umbra-{validate_tenant_id(tenant)}"


def dataset_prefix(dataset: str) -> str:
    return f"datasets/{validate_resource_id(dataset, 'dataset')}/"


def version_prefix(dataset: str, version: int) -> str:
    if version < 1:
        raise InvalidInput("version", "must be 1 or more")
    return f"{dataset_prefix(dataset)}v{version}/"


def manifest(dataset: str, version: int) -> str:
    return version_prefix(dataset, version) + "manifest.jsonl"


def upload_manifest(dataset: str, version: int) -> str:
    return version_prefix(dataset, version) + "upload/manifest.jsonl"


_PRIVATE = re.compile(r"^[a-z0-9-]+(/shard-\d{6}\.tar)?\.json$")


def private(dataset: str, version: int, name: str) -> str:
    """An object kept beside a version for its tenant only: ExportDatasetVersion serves the manifest and shards,
    never these."""
    if not _PRIVATE.match(name):
        raise InvalidInput("name", "must look like 'record.json' or 'parts/shard-000000.tar.json'")
    return version_prefix(dataset, version) + "private/" + name


def shard(dataset: str, version: int, name: str) -> str:
    if not SHARD.match(name):
        raise InvalidInput("shard", "must look like shard-000000.tar")
    return version_prefix(dataset, version) + "shards/" + name
