"""Helpers over the generated contracts: load them all, and unpack an `Any` without knowing its type."""

from __future__ import annotations

import importlib
import pkgutil

from google.protobuf import any_pb2, descriptor_pool, message, message_factory

AREAS = ("common", "coordinator", "anonymizer", "distortion", "training", "unlearning")


def load_all() -> None:
    """Imports every generated module, so their message types are known to the default pool."""
    for area in AREAS:
        package = importlib.import_module(f"umbra.{area}.v1")
        for info in pkgutil.iter_modules(package.__path__):
            if info.name.endswith("_pb2"):
                importlib.import_module(f"umbra.{area}.v1.{info.name}")


def unpack(packed: any_pb2.Any) -> message.Message | None:
    """The message inside `packed`, or None when its type is not loaded (see load_all) or it is empty."""
    if not packed.type_url:
        return None
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(packed.TypeName())
    except KeyError:
        return None
    msg = message_factory.GetMessageClass(descriptor)()
    return msg if packed.Unpack(msg) else None
