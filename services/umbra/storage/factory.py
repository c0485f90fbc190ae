"""Which object store a service uses, from its configuration."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from umbra.storage.base import ObjectStore

KINDS = ("local", "s3")


@dataclass(frozen=True)
class StoreConfig:
    kind: str = "local"
    root: Path = Path(".umbra/objects")  # local
    endpoint: str = ""  # s3: host:port
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    secure: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str], home: Path) -> "StoreConfig":
        """UMBRA_STORE (local|s3), UMBRA_STORE_DIR, UMBRA_S3_ENDPOINT, UMBRA_S3_ACCESS_KEY, UMBRA_S3_SECRET_KEY,
        UMBRA_S3_SECURE. Raises ValueError naming the variable."""
        kind = env.get("UMBRA_STORE", "local")
        if kind not in KINDS:
            raise ValueError(f"UMBRA_STORE: {kind!r} is not one of {', '.join(KINDS)}")
        config = cls(
            kind=kind,
            root=Path(env.get("UMBRA_STORE_DIR") or home / "objects"),
            endpoint=env.get("UMBRA_S3_ENDPOINT", ""),
            access_key=env.get("UMBRA_S3_ACCESS_KEY", ""),
            secret_key=env.get("UMBRA_S3_SECRET_KEY", ""),
            secure=env.get("UMBRA_S3_SECURE", "0") in ("1", "true", "yes"),
        )
        if kind == "s3":
            for name, value in (("UMBRA_S3_ENDPOINT", config.endpoint), ("UMBRA_S3_ACCESS_KEY", config.access_key),
                                ("UMBRA_S3_SECRET_KEY", config.secret_key)):
                if not value:
                    raise ValueError(f"{name}: required when UMBRA_STORE=s3")
        return config


def open_store(config: StoreConfig) -> ObjectStore:
    if config.kind == "s3":
        from umbra.storage.s3 import S3ObjectStore

        return S3ObjectStore(config.endpoint, config.access_key, config.secret_key, secure=config.secure)
    from umbra.storage.local import LocalObjectStore

    return LocalObjectStore(config.root)
