"""Resource names (AIP-122) parsed into validated ids, the same way in every service: the request field is named
in every error, and an id is only ever returned validated (object keys are built from ids, never from names).

    model = names.model("models/faces-cnn", "model")                         # "faces-cnn"
    model, version = names.model_version("models/faces-cnn/versions/3")     # ("faces-cnn", 3)
    dataset, version = names.dataset_version("datasets/faces/versions/2")   # ("faces", 2)
    publication = names.publication("publications/gender-api")              # "gender-api"
"""

from __future__ import annotations

import re

from umbra.runtime.auth import validate_tenant_id
from umbra.runtime.errors import InvalidInput

# Matched whole with re.fullmatch (a "$" anchor would accept a trailing newline); every class is ASCII.
RESOURCE_ID = re.compile(r"[a-z][a-z0-9-]{1,61}[a-z0-9]")
_OPERATION = re.compile(r"operations/[0-9a-f]{32}")
_API_KEY = re.compile(r"tenants/([^/]+)/apiKeys/([0-9a-f]{12})")


def validate_resource_id(value: str, field: str) -> str:
    """A model's, dataset's or served model's id: what object keys are built from."""
    if not isinstance(value, str) or not RESOURCE_ID.fullmatch(value):
        raise InvalidInput(field, "must be 3-63 characters of lower-case letters, digits and '-', starting with "
                                  "a letter and not ending with '-'")
    return value


def _parse(name: str, collection: str, field: str, *, versioned: bool) -> tuple[str, int]:
    pattern = f"{collection}/{{{collection[:-1]}}}" + ("/versions/{version}" if versioned else "")
    parts = name.split("/")
    if versioned:
        ok = (len(parts) == 4 and parts[0] == collection and parts[2] == "versions" and parts[3].isascii()
              and parts[3].isdigit() and len(parts[3]) <= 9 and int(parts[3]) >= 1)
    else:
        ok = len(parts) == 2 and parts[0] == collection
    if not ok:
        raise InvalidInput(field, f"must look like '{pattern}'" + (" with a version of 1 or more" if versioned else ""))
    return validate_resource_id(parts[1], field), int(parts[3]) if versioned else 0


def model(name: str, field: str = "name") -> str:
    """The id in 'models/{model}'."""
    return _parse(name, "models", field, versioned=False)[0]


def model_version(name: str, field: str = "name") -> tuple[str, int]:
    """(id, version) of 'models/{model}/versions/{version}'."""
    return _parse(name, "models", field, versioned=True)


def dataset(name: str, field: str = "name") -> str:
    """The id in 'datasets/{dataset}'."""
    return _parse(name, "datasets", field, versioned=False)[0]


def dataset_version(name: str, field: str = "name") -> tuple[str, int]:
    """(id, version) of 'datasets/{dataset}/versions/{version}'."""
    return _parse(name, "datasets", field, versioned=True)


def publication(name: str, field: str = "name") -> str:
    """The id in 'publications/{publication}'."""
    return _parse(name, "publications", field, versioned=False)[0]


def tenant(name: str, field: str = "name") -> str:
    """The id in 'tenants/{tenant}'."""
    if not name.startswith("tenants/"):
        raise InvalidInput(field, "must look like 'tenants/{tenant}'")
    return validate_tenant_id(name.removeprefix("tenants/"), field)


def api_key(name: str, field: str = "name") -> tuple[str, str]:
    """(tenant, key id) of 'tenants/{tenant}/apiKeys/{key}'."""
    match = _API_KEY.fullmatch(name)
    if not match:
        raise InvalidInput(field, "must look like 'tenants/{tenant}/apiKeys/{key}'")
    return validate_tenant_id(match.group(1), field), match.group(2)


def operation(name: str, field: str = "name") -> str:
    """The id in 'operations/{operation}' (32 hex digits): also the run id of the operation's checkpoints."""
    if not _OPERATION.fullmatch(name):
        raise InvalidInput(field, "must look like 'operations/' followed by 32 hex digits")
    return name.removeprefix("operations/")


def model_ref(ref, field: str) -> tuple[str, int]:
    """(model id, version) of a ModelRef (`model` 'models/{model}', `version` 1 or more)."""
    if not ref.model.startswith("models/") or ref.version < 1:
        raise InvalidInput(field, "needs model 'models/{model}' and a version of 1 or more")
    return validate_resource_id(ref.model.removeprefix("models/"), f"{field}.model"), ref.version
