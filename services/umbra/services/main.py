"""`umbra serve <service>`: read the configuration once, then serve until SIGTERM."""

from __future__ import annotations

import sys

from umbra.runtime.config import ConfigError, ServiceConfig
from umbra.runtime.metrics import MetricsPortTaken
from umbra.runtime.server import serve
from umbra.runtime.sql import StartupError
from umbra.services.registry import spec


def serve_service(service: str) -> int:
    try:
        config = ServiceConfig.from_env(service)
        service_spec = spec(service)
    except (ConfigError, ValueError) as exc:
        print(f"umbra serve {service}: {exc}", file=sys.stderr)
        return 2
    try:
        return serve(config, service_spec)
    except (StartupError, MetricsPortTaken) as exc:  # the database or the metrics port: one line, no traceback
        print(f"umbra serve {service}: {exc}", file=sys.stderr)
        return 2
