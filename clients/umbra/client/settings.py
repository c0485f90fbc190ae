"""Where the SDK finds its endpoint and credential: the environment first, then a config file.

    UMBRA_ENDPOINT   host:port of the coordinator (default 127.0.0.1:50051)
    UMBRA_API_KEY    a tenant API key (or the admin key)
    UMBRA_CONFIG     the config file (default ~/.config/umbra/config.toml), TOML:

        endpoint = "umbra.example.org:443"
        api_key = "umbra_..."
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from umbra.client import layout

DEFAULT_CONFIG = Path("~/.config/umbra/config.toml")


@dataclass(frozen=True)
class ClientSettings:
    endpoint: str
    api_key: str = field(default="", repr=False)

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> "ClientSettings":
        env = os.environ if environ is None else environ
        path = Path(env.get("UMBRA_CONFIG") or DEFAULT_CONFIG).expanduser()
        from_file: dict = {}
        if path.is_file():
            try:
                from_file = tomllib.loads(path.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"{path}: not valid TOML ({exc})") from None
        for key in ("endpoint", "api_key"):
            if key in from_file and not isinstance(from_file[key], str):
                raise ValueError(f"{path}: {key} must be a string")
        endpoint = env.get("UMBRA_ENDPOINT") or from_file.get("endpoint") or layout.endpoint("coordinator", env).target
        return cls(endpoint=endpoint, api_key=env.get("UMBRA_API_KEY") or from_file.get("api_key", ""))
