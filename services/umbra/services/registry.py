"""Service name -> its ServiceSpec, imported only when asked for (a worker never loads another's code)."""

from __future__ import annotations

import importlib

from umbra.client.layout import SERVICES
from umbra.runtime.server import ServiceSpec


def spec(service: str) -> ServiceSpec:
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; known: {', '.join(SERVICES)}")
    return importlib.import_module(f"umbra.services.{service}").SPEC
