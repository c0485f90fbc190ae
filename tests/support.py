"""Helpers shared by the test levels: real servers on free ports, real channels, credentials.

Importable from any test as `support` (pytest puts tests/ on the path, see pyproject.toml)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from umbra.client.channel import open_channel
from umbra.runtime.config import ServiceConfig
from umbra.runtime.server import RunningService, create_server
from umbra.services.registry import spec

SERVICE_TOKEN = "test-service-token-0123456789"
ADMIN_KEY = "test-admin-key-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_for(service: str, data_dir: Path, port: int = 0, **overrides) -> ServiceConfig:
    env = {
        "UMBRA_HOME": str(data_dir),
        f"UMBRA_{service.upper()}_PORT": str(port),
        "UMBRA_SERVICE_TOKEN": SERVICE_TOKEN,
        "UMBRA_ADMIN_KEY": ADMIN_KEY,
        "UMBRA_GRACE_SECONDS": "2",
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return ServiceConfig.from_env(service, env)


@dataclass
class Served:
    """A real service on 127.0.0.1 and what a test needs to call it."""

    name: str
    running: RunningService
    credential: str  # a tenant API key for the coordinator, the service token for workers
    tenant: str

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def channel(self, credential: str | None = None, tenant: str | None = None) -> grpc.Channel:
        """A channel with this service's valid credential (or the one given; "" for none)."""
        cred = self.credential if credential is None else credential
        if tenant is None:
            tenant = self.tenant if self.name != "coordinator" else ""
        return open_channel(self.target, cred, tenant=tenant)


def start_service(service: str, data_dir: Path, tenant: str = "acme", *, budget: tuple[float, float] | None = None,
                  coordinator: "Served | None" = None, **env) -> Served:
    """A real service on a free port. The coordinator gets `tenant` made by the admin (with `budget`, or the
    default); a worker given the `coordinator` charges that coordinator's privacy ledger."""
    if coordinator is not None:
        env["UMBRA_COORDINATOR_URL"] = coordinator.target
    running = create_server(config_for(service, data_dir, **env), spec(service)).start()
    if service == "coordinator":
        credential = create_tenant(f"127.0.0.1:{running.port}", tenant, budget=budget)
    else:
        credential = SERVICE_TOKEN
    return Served(service, running, credential, tenant)


def status_details(error: grpc.RpcError) -> dict:
    """The ErrorInfo reason/metadata and BadRequest field of a failed call."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    found: dict = {}
    status = rpc_status.from_call(error)
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            found.update(reason=info.reason, domain=info.domain, metadata=dict(info.metadata))
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found["fields"] = [v.field for v in bad.field_violations]
    return found


def start_coordinator(data_dir: Path, **overrides) -> RunningService:
    """A coordinator on a free port with its own data folder (local object store unless overridden)."""
    return create_server(config_for("coordinator", data_dir, **overrides), spec("coordinator")).start()


def create_tenant(target: str, tenant: str, *, budget: tuple[float, float] | None = None) -> str:
    """Creates a tenant with the admin key (and a privacy budget, or the default); returns its first API key."""
    from umbra.common.v1 import privacy_pb2
    from umbra.coordinator.v1 import tenant_service_pb2, tenant_service_pb2_grpc

    stub = tenant_service_pb2_grpc.TenantServiceStub(open_channel(target, ADMIN_KEY))
    request = tenant_service_pb2.CreateTenantRequest(tenant_id=tenant)
    if budget is not None:
        request.tenant.privacy_budget.CopyFrom(privacy_pb2.PrivacyBudget(epsilon=budget[0], delta=budget[1]))
    return stub.CreateTenant(request, timeout=30).api_key_secret


def commit_faces(store, bucket: str, count: int, *, dataset: str = "faces", size: int = 32, seed: int = 2):
    """Writes `count` synthetic faces straight into a store as a committed version 1 (every 4th in "test",
    every 8th of the rest in "val"), the way a commit leaves it; returns its reader."""
    from umbra.dataset import synthetic

    rows = []
    for i, face in enumerate(synthetic.generate(count, size=size, seed=seed)):
        labels = {k: synthetic.csv_value(v) for k, v in face.attributes.items()}
        split = "test" if i % 4 == 0 else "val" if i % 8 == 1 else "train"
        rows.append((face.key, split, labels, face.png))
    return commit_samples(store, bucket, dataset, 1, rows, size=size)


def commit_samples(store, bucket: str, dataset: str, version: int, rows, *, size: int = 32):
    """Writes (key, split, labels, png) rows straight into a store as a committed version, the way a commit
    leaves it; returns its reader."""
    import hashlib

    from umbra.dataset import manifest as mf
    from umbra.dataset.shards import ShardWriter
    from umbra.storage import keys
    from umbra.storage.datasets import DatasetReader

    shard_sha: dict[str, str] = {}

    def save(name: str, data: bytes) -> None:
        store.put(bucket, keys.shard(dataset, version, name), data)
        shard_sha[name] = hashlib.sha256(data).hexdigest()

    writer = ShardWriter(save, max_bytes=32 * 1024)
    samples = [writer.add(mf.Sample(key=key, shard="", split=split, sha256=hashlib.sha256(png).hexdigest(),
                                    size=len(png), labels=labels), png) for key, split, labels, png in rows]
    header = mf.Header(image_size=size, label_columns=sorted({c for s in samples for c in s.labels}),
                       attribute_columns=[], shards=writer.close(), samples=len(samples), shard_sha256=shard_sha)
    store.put(bucket, keys.manifest(dataset, version), mf.dumps(header, samples))
    return DatasetReader(store, bucket, dataset, version)


def serve_process(service: str, home: Path, port: int, **settings: str) -> subprocess.Popen:
    """`umbra serve <service>` as its own process (so a test can SIGKILL it), once it answers SERVING; `settings`
    are more UMBRA_* variables."""
    from umbra.client import health_of

    env = dict(os.environ, UMBRA_HOME=str(home), **{f"UMBRA_{service.upper()}_PORT": str(port)},
               UMBRA_SERVICE_TOKEN=SERVICE_TOKEN, UMBRA_ADMIN_KEY=ADMIN_KEY, **settings)
    proc = subprocess.Popen([sys.executable, "-m", "umbra.cli.main", "serve", service], env=env,
                            stdout=open(home / f"{service}-{time.time_ns()}.log", "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while health_of(f"127.0.0.1:{port}", timeout=0.5) != "SERVING":
        assert proc.poll() is None and time.monotonic() < deadline, f"the {service} service did not start"
        time.sleep(0.2)
    return proc


def with_fields(message, **overrides):
    """`message` with fields set: messages copied in, lists replace repeated fields, scalars assigned."""
    for field, value in overrides.items():
        if hasattr(value, "CopyFrom"):
            getattr(message, field).CopyFrom(value)
        elif isinstance(value, list):
            del getattr(message, field)[:]
            getattr(message, field).extend(value)
        else:
            setattr(message, field, value)
    return message


def write_extractor(store, bucket: str, name: str, *, task: str = "gender", classes: tuple[str, ...] = ("0", "1"),
                    image_size: int = 32) -> None:
    """A small real (untrained) GroupNorm CNN in the model registry, as the training service leaves one."""
    import torch

    from umbra.classifiers.architectures import create
    from umbra.classifiers.model_config import ModelConfig
    from umbra.classifiers.registry import ModelRegistry

    torch.manual_seed(0)
    config = ModelConfig("groupnorm_cnn", len(classes), image_size, classes=list(classes), width=8)
    ModelRegistry(store).write(bucket, name, config, create(config).state_dict(),
                               {"task": task, "classes": list(classes), "dataset": {"dataset": "datasets/faces"}})


def write_tiny_generator(store, bucket: str) -> None:
    """models/gen version 1: a tiny random generator conditioned on gender and age of datasets/faces version 1 (trained
    on other data: its ε_g is not charged), for the dataset-wide anonymization tests."""
    import torch

    from umbra.classifiers.registry import ModelRegistry
    from umbra.diffusion.attributes import schema_for
    from umbra.diffusion.generator import build
    from umbra.diffusion.generator_config import GeneratorConfig
    from umbra.storage.datasets import DatasetReader

    columns: dict[str, list[str]] = {}
    for sample in DatasetReader(store, bucket, "faces", 1).samples():
        for name, value in sample.labels.items():
            columns.setdefault(name, []).append(value)
    config = GeneratorConfig(image_size=16, attributes=schema_for(columns, ["gender", "age"]), channels=(8, 16, 16),
                             attention=False)
    torch.manual_seed(0)
    ModelRegistry(store).write(bucket, "gen", config, build(config).state_dict(),
                               {"kind": "generator", "privacy": {"dp": False},
                                "dataset": {"dataset": "datasets/public", "version": 1}})
