"""Parsing resource names from requests into validated ids (AIP-122)."""

from __future__ import annotations

import re

from umbra.runtime.errors import InvalidInput
from umbra.storage.keys import validate_resource_id

_DATASET = re.compile(r"^datasets/([^/]+)$")
_VERSION = re.compile(r"^datasets/([^/]+)/versions/(\d{1,9})$")


def dataset(name: str, field: str = "name") -> str:
    match = _DATASET.match(name)
    if not match:
        raise InvalidInput(field, "must look like 'datasets/{dataset}'")
    return validate_resource_id(match.group(1), field)


def version(name: str, field: str = "name") -> tuple[str, int]:
    match = _VERSION.match(name)
    if not match or int(match.group(2)) < 1:
        raise InvalidInput(field, "must look like 'datasets/{dataset}/versions/{version}' with a version of 1 or more")
    return validate_resource_id(match.group(1), field), int(match.group(2))


def tenant(name: str, field: str = "name") -> str:
    from umbra.runtime.auth import validate_tenant_id

    if not name.startswith("tenants/"):
        raise InvalidInput(field, "must look like 'tenants/{tenant}'")
    return validate_tenant_id(name.removeprefix("tenants/"), field)


def api_key(name: str, field: str = "name") -> tuple[str, str]:
    match = re.match(r"^tenants/([^/]+)/apiKeys/([0-9a-f]{12})$", name)
    if not match:
        raise InvalidInput(field, "must look like 'tenants/{tenant}/apiKeys/{key}'")
    from umbra.runtime.auth import validate_tenant_id

    return validate_tenant_id(match.group(1), field), match.group(2)
