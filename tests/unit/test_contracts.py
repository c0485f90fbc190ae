"""Conventions of the contracts, checked on the compiled descriptors of every generated module (umbra.<area>.v1):

- an RPC answering a long-running operation names its response and metadata types in
  `google.longrunning.operation_info`, and the metadata starts with the common progress field;
- List* RPCs paginate the same way (AIP-158);
- mutations a client may retry take an idempotency key, `request_id` (see `test_retryable_mutations_...`);
- every enum's zero value is the `..._UNSPECIFIED` default.

Each check is parametrized per RPC or enum, so a failure names the exact one.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from types import ModuleType

import pytest
from google.longrunning import operations_proto_pb2
from google.protobuf import descriptor, descriptor_pool

from umbra.client import protos

protos.load_all()
POOL = descriptor_pool.Default()
F = descriptor.FieldDescriptor
OPERATION = operations_proto_pb2.Operation.DESCRIPTOR.full_name
PROGRESS = "umbra.common.v1.OperationProgress"


def generated_modules() -> Iterator[ModuleType]:
    for area in protos.AREAS:
        package = importlib.import_module(f"umbra.{area}.v1")
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
            if info.name.endswith("_pb2"):
                yield importlib.import_module(f"{package.__name__}.{info.name}")


MODULES = list(generated_modules())
METHODS = [method for module in MODULES for service in module.DESCRIPTOR.services_by_name.values()
           for method in service.methods]


def _enums(message: descriptor.Descriptor) -> Iterator[descriptor.EnumDescriptor]:
    yield from message.enum_types
    for nested in message.nested_types:
        yield from _enums(nested)


ENUMS = [enum for module in MODULES for enum in (
    *module.DESCRIPTOR.enum_types_by_name.values(),
    *(e for message in module.DESCRIPTOR.message_types_by_name.values() for e in _enums(message)))]


def method_id(method: descriptor.MethodDescriptor) -> str:
    return f"{method.containing_service.full_name}/{method.name}"


def returns_operation(method: descriptor.MethodDescriptor) -> bool:
    field = method.output_type.fields_by_name.get("operation")
    return field is not None and field.type == F.TYPE_MESSAGE and field.message_type.full_name == OPERATION


def operation_info(method: descriptor.MethodDescriptor):
    return method.GetOptions().Extensions[operations_proto_pb2.operation_info]


def has_operation_info(method: descriptor.MethodDescriptor) -> bool:
    return method.GetOptions().HasExtension(operations_proto_pb2.operation_info)


def package_of(method: descriptor.MethodDescriptor) -> str:
    return method.containing_service.file.package


def resolve(name: str, package: str) -> descriptor.Descriptor:
    """A type named in operation_info: unqualified names are in the method's package (AIP-151)."""
    return POOL.FindMessageTypeByName(name if "." in name else f"{package}.{name}")


def field_type(field: descriptor.FieldDescriptor) -> str:
    return field.message_type.full_name if field.type == F.TYPE_MESSAGE else str(field.type)


OPERATION_METHODS = [m for m in METHODS if returns_operation(m) or has_operation_info(m)]
LIST_METHODS = [m for m in METHODS if m.name.startswith("List")]

# Mutations that a client may retry after a lost answer: doing them twice must not do the work twice.
# Anonymize is here too: a preview spends privacy budget, so a retry must not charge the ledger twice.
RETRYABLE_VERBS = ("Create", "Delete", "Train", "Distort", "Unlearn", "Anonymize", "Publish",
                   "SubmitFeedback", "Commit", "Export")
# RPCs whose name starts with one of those verbs but that change nothing, with the reason.
NOT_MUTATIONS = {
    "umbra.coordinator.v1.DatasetService/ExportDatasetVersion": "a read: it only gives download targets",
}
RETRYABLE_MUTATIONS = [m for m in METHODS
                       if (returns_operation(m) or m.name.startswith(RETRYABLE_VERBS))
                       and method_id(m) not in NOT_MUTATIONS]


def test_the_walk_finds_the_contracts():
    assert len(MODULES) >= 13 and METHODS and ENUMS
    assert OPERATION_METHODS and LIST_METHODS and RETRYABLE_MUTATIONS
    for name in NOT_MUTATIONS:
        assert name in {method_id(m) for m in METHODS}, f"{name} is listed as a non-mutation but does not exist"


@pytest.mark.parametrize("method", OPERATION_METHODS, ids=method_id)
def test_operations_name_their_response_and_metadata(method):
    """An RPC whose response has `operation` (a google.longrunning.Operation) carries operation_info, and
    the other way round; the metadata type is in the same package and its field 1 is `progress`, a
    umbra.common.v1.OperationProgress; the response type exists."""
    assert returns_operation(method), f"{method_id(method)} has operation_info but returns no operation"
    assert has_operation_info(method), f"{method_id(method)} returns an operation without operation_info"
    info = operation_info(method)
    package = package_of(method)
    assert info.response_type and info.metadata_type, f"{method_id(method)}: operation_info is incomplete: {info}"

    try:
        metadata = resolve(info.metadata_type, package)
    except KeyError:
        pytest.fail(f"{method_id(method)}: metadata type {info.metadata_type!r} does not exist in {package}")
    assert metadata.file.package == package, f"{method_id(method)}: metadata {metadata.full_name} not in {package}"
    progress = metadata.fields_by_number.get(1)
    assert progress is not None and progress.name == "progress" and not progress.is_repeated, (
        f"{metadata.full_name}: field 1 must be `progress`")
    assert field_type(progress) == PROGRESS, f"{metadata.full_name}.progress is {field_type(progress)}"

    try:
        resolve(info.response_type, package)
    except KeyError:
        pytest.fail(f"{method_id(method)}: response type {info.response_type!r} does not exist")


@pytest.mark.parametrize("method", LIST_METHODS, ids=method_id)
def test_lists_paginate(method):
    """AIP-158: int32 page_size and string page_token in, string next_page_token out."""
    expected = [(method.input_type, "page_size", F.TYPE_INT32), (method.input_type, "page_token", F.TYPE_STRING),
                (method.output_type, "next_page_token", F.TYPE_STRING)]
    for message, name, kind in expected:
        field = message.fields_by_name.get(name)
        assert field is not None, f"{message.full_name} has no {name}"
        assert field.type == kind and not field.is_repeated, f"{message.full_name}.{name} has the wrong type"


@pytest.mark.parametrize("method", RETRYABLE_MUTATIONS, ids=method_id)
def test_retryable_mutations_take_a_request_id(method):
    """The rule: every RPC that returns a long-running operation (a retry without a key starts a second
    one), and every RPC named Create*, Delete*, Train*, Distort*, Unlearn*, Anonymize*, Publish*,
    SubmitFeedback, Commit* or Export*, takes a string `request_id` (the idempotency key). Exempt, by name
    and with a reason, only the RPCs in NOT_MUTATIONS that have such a name but change nothing.

    Not covered by the rule, and idempotent without a key: UpdateTenant (sets fields), RevokeApiKey
    (revoking twice leaves the key revoked) and UploadDatasetChunk (chunks carry their offset)."""
    field = method.input_type.fields_by_name.get("request_id")
    assert field is not None, f"{method_id(method)} is a retryable mutation but {method.input_type.name} " \
                              f"has no request_id"
    assert field.type == F.TYPE_STRING and not field.is_repeated, f"{method.input_type.full_name}.request_id " \
                                                                  f"is not a string"


@pytest.mark.parametrize("enum", ENUMS, ids=lambda e: e.full_name)
def test_enum_zero_is_unspecified(enum):
    zero = enum.values_by_number.get(0)
    assert zero is not None, f"{enum.full_name} has no zero value"
    assert zero.name.endswith("_UNSPECIFIED"), f"{enum.full_name}: zero value {zero.name} is not *_UNSPECIFIED"
