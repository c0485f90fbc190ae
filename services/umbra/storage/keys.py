"""The object layout. Every key is built here from validated ids; nothing from a request is used verbatim.

    umbra-<tenant>/datasets/<dataset>/v<version>/manifest.jsonl           visible once written (last)
    umbra-<tenant>/datasets/<dataset>/v<version>/shards/shard-000000.tar  written by the commit only
    umbra-<tenant>/datasets/<dataset>/v<version>/upload/manifest.jsonl    staged: the uploader's, before commit
    umbra-<tenant>/datasets/<dataset>/v<version>/upload/shards/shard-000000.tar
    umbra-<tenant>/datasets/<dataset>/v<version>/private/...            what made the version (e.g. the MDP start
                                                                         mapping); never exported with it
    umbra-<tenant>/jobs/<job>/report.json, report.html, report.pdf, rounds/<n>/<key>.png   a protection job's outputs

Uploads (streams, presigned PUTs, workers writing a derived version) only ever write under `upload/`. The commit
copies the staged shards to `shards/` once uploads are closed, checks those copies and writes the manifest: a
write that arrives late lands in `upload/`, which nothing reads after the commit, so a committed version cannot
change.
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
    return upload_prefix(dataset, version) + "manifest.jsonl"


_PRIVATE = re.compile(r"[a-z0-9-]+(/shard-[0-9]{6}\.tar)?\.json")


def private(dataset: str, version: int, name: str) -> str:
    """An object kept beside a version for its tenant only: ExportDatasetVersion serves the manifest and shards,
    never these."""
    if not _PRIVATE.fullmatch(name):
        raise InvalidInput("name", "must look like 'record.json' or 'parts/shard-000000.tar.json'")
    return version_prefix(dataset, version) + "private/" + name


_JOB_OBJECT = re.compile(r"(report\.(json|html|pdf)|rounds/[1-9][0-9]{0,5}/[A-Za-z0-9_-]{1,95}\.png)")


def job_object(job: str, name: str) -> str:
    """An object of a protection job: its report, or a preview image of one of its rounds."""
    if not _JOB_OBJECT.fullmatch(name):
        raise InvalidInput("name", "must be 'report.json', 'report.html', 'report.pdf' or "
                                   "'rounds/<n>/<sample key>.png'")
    return f"jobs/{validate_resource_id(job, 'job')}/{name}"


def upload_prefix(dataset: str, version: int) -> str:
    return version_prefix(dataset, version) + "upload/"


def upload_shard(dataset: str, version: int, name: str) -> str:
    """Where an uploader stages a shard before the commit copies it to `shard(...)`."""
    if not SHARD.fullmatch(name):
        raise InvalidInput("shard", "must look like shard-000000.tar")
    return upload_prefix(dataset, version) + "shards/" + name


_VERSION_KEY = re.compile(r"datasets/([a-z][a-z0-9-]{1,61}[a-z0-9])/v([1-9][0-9]{0,8})/(.+)")


def parse_version_key(key: str) -> tuple[str, int, str] | None:
    """(dataset, version, rest) of a key under a version's prefix, or None for any other key."""
    match = _VERSION_KEY.fullmatch(key)
    return (match.group(1), int(match.group(2)), match.group(3)) if match else None


def shard(dataset: str, version: int, name: str) -> str:
    if not SHARD.fullmatch(name):
        raise InvalidInput("shard", "must look like shard-000000.tar")
    return version_prefix(dataset, version) + "shards/" + name
