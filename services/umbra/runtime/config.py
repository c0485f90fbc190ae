"""Service configuration: one frozen dataclass, read from the environment once, in `umbra serve`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from umbra.client import layout

MIB = 1024 * 1024
STORE_KINDS = ("local", "s3")


@dataclass(frozen=True)
class StoreConfig:
    """Which object store to open (umbra.storage.open_store), and how."""

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
        if kind not in STORE_KINDS:
            raise ValueError(f"UMBRA_STORE: {kind!r} is not one of {', '.join(STORE_KINDS)}")
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


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float, integer: bool) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise ConfigError(f"{name}: {raw!r} is not a {'whole number' if integer else 'number'}") from None
    if value < minimum:
        raise ConfigError(f"{name}: {value} is below the minimum {minimum}")
    return value


_YES, _NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _review(env: Mapping[str, str], grpc_port: int) -> dict:
    """UMBRA_REVIEW_PORT, UMBRA_REVIEW_SECRET, UMBRA_REVIEW_SECURE_COOKIES (the review page)."""
    port = int(_number(env, "UMBRA_REVIEW_PORT", 0, minimum=0, integer=True))
    if port > 65535:
        raise ConfigError(f"UMBRA_REVIEW_PORT: {port} is not a port (0 to 65535)")
    if port and port == grpc_port:
        raise ConfigError(f"UMBRA_REVIEW_PORT: {port} is the service's gRPC port; the review page needs its own")
    secret = env.get("UMBRA_REVIEW_SECRET", "")
    if secret and len(secret) < 16:
        raise ConfigError("UMBRA_REVIEW_SECRET: must be at least 16 characters (or unset: derived from "
                          "UMBRA_SERVICE_TOKEN)")
    secure = env.get("UMBRA_REVIEW_SECURE_COOKIES", "").strip().lower()
    if secure not in ("", *_YES, *_NO):
        raise ConfigError(f"UMBRA_REVIEW_SECURE_COOKIES: {secure!r} is not one of 1, true, yes, on, 0, false, no, off")
    return {"review_port": port, "review_secret": secret, "review_secure_cookies": secure in _YES}


def _metrics_port(env: Mapping[str, str], grpc_port: int) -> int:
    """UMBRA_METRICS_PORT: where /metrics is served (0: off)."""
    port = int(_number(env, "UMBRA_METRICS_PORT", 0, minimum=0, integer=True))
    if port > 65535:
        raise ConfigError(f"UMBRA_METRICS_PORT: {port} is not a port (0 to 65535)")
    if port and port == grpc_port:
        raise ConfigError(f"UMBRA_METRICS_PORT: {port} is the service's gRPC port; metrics need their own")
    if port and str(port) == env.get("UMBRA_REVIEW_PORT", "").strip():
        raise ConfigError(f"UMBRA_METRICS_PORT: {port} is the review page's port (UMBRA_REVIEW_PORT)")
    return port


@dataclass(frozen=True)
class ServiceConfig:
    """Everything a service needs to start. Secrets are excluded from repr so they never reach a log."""

    service: str
    host: str
    port: int
    data_dir: Path
    # Internal credential: the coordinator presents it to workers; workers require it.
    service_token: str = field(repr=False)
    # Admin credential of the coordinator (creates tenants). Only its hash is kept in memory by the server.
    admin_key: str = field(default="", repr=False)
    grace_seconds: float = 30.0
    max_message_bytes: int = 16 * MIB
    max_workers: int = 16
    max_wait_seconds: float = 60.0
    log_level: str = "INFO"
    store: StoreConfig = field(default_factory=StoreConfig)
    # How long presigned upload and download URLs stay valid.
    presign_seconds: int = 3600
    # Uploads not committed within this time are deleted (objects and record).
    upload_ttl_seconds: float = 24 * 3600.0
    # The coordinator's database (a SQLAlchemy URL): "" for the SQLite file in data_dir, which one coordinator
    # process may use; postgresql+psycopg://… for any number of replicas (docs/deployment.md).
    database_url: str = field(default="", repr=False)
    # How long a coordinator replica's lease on a protection job lasts unrenewed (renewed every third of it): a
    # dead replica's jobs are taken over by another within this time.
    job_lease_seconds: float = 15.0
    # How long the coordinator waits for a worker that cannot be reached (restarting) before the job fails.
    worker_wait_seconds: float = 120.0
    # The inference server (Triton, gRPC host:port) that published models are served from; "" when none.
    inference_url: str = ""
    # The training service (gRPC host:port), which the unlearning service asks to retrain when verifying.
    training_url: str = ""
    # The coordinator (gRPC host:port), whose privacy ledger the workers charge before work that spends privacy.
    coordinator_url: str = ""
    # The anonymizer replicas (gRPC host:port each) the coordinator's protection jobs call.
    anonymizer_urls: tuple[str, ...] = ()
    # The unlearning service (gRPC host:port), which the coordinator's protection jobs ask to update a model.
    unlearning_url: str = ""
    # The distortion service (gRPC host:port), which the coordinator's protection jobs ask for MDP/AugMDP.
    distortion_url: str = ""
    # How long a worker whose work is done retries committing its privacy charge while the coordinator cannot be
    # reached, before it ends the work interrupted (the same request_id then commits it).
    ledger_commit_seconds: float = 120.0
    # Bounds on what one call and one tenant may hold (the interceptor enforces them; docs/configuration.md).
    # A client stream (UploadDatasetChunk, reflection) that sends no message for this long is ended.
    stream_idle_seconds: float = 30.0
    # The longest a client stream may last, however busy.
    stream_max_seconds: float = 900.0
    # Calls in flight per tenant (tenant API keys; not the admin key, not Umbra's own service calls).
    tenant_max_calls: int = 4
    # Client streams in flight per tenant.
    tenant_max_streams: int = 2
    # Client streams in flight in all, whoever calls: the rest of the RPC threads stay for unary calls.
    max_streams: int = 8
    # Calls waiting for an RPC thread beyond max_workers; more are refused RESOURCE_EXHAUSTED by grpc itself.
    max_queued_calls: int = 64
    # The review page (umbra.services.coordinator.review): its HTTP port on `host` (0: off), the secret its session
    # cookies are encrypted with ("": derived from service_token, so every replica shares it), and whether those
    # cookies carry the Secure flag (HTTPS only). The services serve no TLS themselves, so it is off by default: turn
    # it on when a TLS-terminating proxy serves the page (docs/configuration.md).
    review_port: int = 0
    review_secret: str = field(default="", repr=False)
    review_secure_cookies: bool = False
    # Prometheus metrics (umbra.runtime.metrics): the HTTP port on `host` that serves /metrics (0: none). The chart
    # sets 9464 (each pod has its own address); on one machine each service needs its own.
    metrics_port: int = 0
    # The training service: the most processes one training request may ask for (TrainRequest.processes).
    training_max_processes: int = 2

    @classmethod
    def from_env(cls, service: str, environ: Mapping[str, str] | None = None) -> "ServiceConfig":
        env = os.environ if environ is None else environ
        try:
            ep = layout.endpoint(service, env)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        home = layout.home(env)
        token = env.get("UMBRA_SERVICE_TOKEN", "")
        if len(token) < 16:
            raise ConfigError(
                "UMBRA_SERVICE_TOKEN: must be set to a secret of at least 16 characters "
                "(`umbra up` makes one in $UMBRA_HOME/secrets/)"
            )
        admin_key = env.get("UMBRA_ADMIN_KEY", "")
        if service in layout.PUBLIC_SERVICES and len(admin_key) < 16:
            raise ConfigError("UMBRA_ADMIN_KEY: the coordinator needs an admin key of at least 16 characters")
        level = env.get("UMBRA_LOG_LEVEL", "INFO").upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(f"UMBRA_LOG_LEVEL: {level!r} is not one of DEBUG, INFO, WARNING, ERROR")
        try:
            store = StoreConfig.from_env(env, home)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        workers = int(_number(env, "UMBRA_MAX_WORKERS", 16, minimum=1, integer=True))
        max_streams = int(_number(env, "UMBRA_MAX_STREAMS", max(1, workers // 2), minimum=1, integer=True))
        if workers > 1 and max_streams >= workers:
            raise ConfigError(f"UMBRA_MAX_STREAMS: {max_streams} would leave none of the {workers} RPC threads "
                              "(UMBRA_MAX_WORKERS) for unary calls and health checks; it must be below it")
        return cls(
            service=service,
            host=ep.host,
            port=ep.port,
            data_dir=Path(env.get(f"UMBRA_{service.upper()}_DATA_DIR") or home / service),
            service_token=token,
            admin_key=admin_key,
            grace_seconds=_number(env, "UMBRA_GRACE_SECONDS", 30.0, minimum=0, integer=False),
            max_message_bytes=int(_number(env, "UMBRA_MAX_MESSAGE_BYTES", 16 * MIB, minimum=1024, integer=True)),
            max_workers=workers,
            max_wait_seconds=_number(env, "UMBRA_MAX_WAIT_SECONDS", 60.0, minimum=0, integer=False),
            log_level=level,
            store=store,
            presign_seconds=int(_number(env, "UMBRA_PRESIGN_SECONDS", 3600, minimum=60, integer=True)),
            upload_ttl_seconds=_number(env, "UMBRA_UPLOAD_TTL_SECONDS", 24 * 3600.0, minimum=0, integer=False),
            database_url=env.get("UMBRA_DATABASE_URL", "").strip(),
            job_lease_seconds=_number(env, "UMBRA_JOB_LEASE_SECONDS", 15.0, minimum=0.5, integer=False),
            worker_wait_seconds=_number(env, "UMBRA_WORKER_WAIT_SECONDS", 120.0, minimum=0, integer=False),
            inference_url=env.get("UMBRA_INFERENCE_URL", ""),
            training_url=env.get("UMBRA_TRAINING_URL") or layout.endpoint("training", env).target,
            coordinator_url=env.get("UMBRA_COORDINATOR_URL") or layout.endpoint("coordinator", env).target,
            anonymizer_urls=tuple(u.strip() for u in env.get("UMBRA_ANONYMIZER_URLS", "").split(",") if u.strip())
            or (layout.endpoint("anonymizer", env).target,),
            unlearning_url=env.get("UMBRA_UNLEARNING_URL") or layout.endpoint("unlearning", env).target,
            distortion_url=env.get("UMBRA_DISTORTION_URL") or layout.endpoint("distortion", env).target,
            ledger_commit_seconds=_number(env, "UMBRA_LEDGER_COMMIT_SECONDS", 120.0, minimum=0, integer=False),
            stream_idle_seconds=_number(env, "UMBRA_STREAM_IDLE_SECONDS", 30.0, minimum=1, integer=False),
            stream_max_seconds=_number(env, "UMBRA_STREAM_MAX_SECONDS", 900.0, minimum=1, integer=False),
            tenant_max_calls=int(_number(env, "UMBRA_TENANT_MAX_CALLS", max(1, workers // 4), minimum=1,
                                         integer=True)),
            tenant_max_streams=int(_number(env, "UMBRA_TENANT_MAX_STREAMS", 2, minimum=1, integer=True)),
            max_streams=max_streams,
            max_queued_calls=int(_number(env, "UMBRA_MAX_QUEUED_CALLS", 4 * workers, minimum=0, integer=True)),
            metrics_port=_metrics_port(env, ep.port),
            training_max_processes=int(_number(env, "UMBRA_TRAINING_MAX_PROCESSES", 2, minimum=1, integer=True)),
            **_review(env, ep.port),
        )
