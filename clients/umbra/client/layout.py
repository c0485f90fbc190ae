"""Where Umbra's services live on one machine: names, default ports, and the environment that sets them.

This is the single source of these names for both sides: the servers read their port from it and the
`umbra up` / `umbra status` commands find the servers with it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# Service name -> default port. The coordinator is the public API; the others are internal workers.
DEFAULT_PORTS: dict[str, int] = {
    "coordinator": 50051,
    "anonymizer": 50052,
    "distortion": 50053,
    "training": 50054,
    "unlearning": 50055,
}
SERVICES: tuple[str, ...] = tuple(DEFAULT_PORTS)
PUBLIC_SERVICES: frozenset[str] = frozenset({"coordinator"})

HOME_ENV = "UMBRA_HOME"
HOST_ENV = "UMBRA_HOST"
DEFAULT_HOME = ".umbra"  # relative to the working directory, so a checkout keeps its own state
DEFAULT_HOST = "127.0.0.1"


def port_env(service: str) -> str:
    """The environment variable holding a service's port, e.g. UMBRA_TRAINING_PORT."""
    return f"UMBRA_{service.upper()}_PORT"


@dataclass(frozen=True)
class Endpoint:
    service: str
    host: str
    port: int

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"


def parse_port(value: str, name: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{name}: {port} is outside 0..65535")
    return port


def endpoint(service: str, environ: Mapping[str, str] | None = None) -> Endpoint:
    if service not in DEFAULT_PORTS:
        raise ValueError(f"unknown service {service!r}; known: {', '.join(SERVICES)}")
    env = os.environ if environ is None else environ
    raw = env.get(port_env(service))
    port = DEFAULT_PORTS[service] if raw in (None, "") else parse_port(raw, port_env(service))
    return Endpoint(service, env.get(HOST_ENV) or DEFAULT_HOST, port)


def home(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get(HOME_ENV) or DEFAULT_HOME).resolve()
