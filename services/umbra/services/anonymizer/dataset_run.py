"""AnonymizeDataset's plan, privacy charge and run: one copy for both ways a dataset is anonymized, the servicer's
long-running operation (each replica given its `shards` by the coordinator, umbra.services.coordinator.sharding)
and a Kubernetes Indexed Job's pods (umbra.services.anonymizer.indexed_job), which serve nothing.

    charged = plan(store, registry, "acme", request)     # every check, before any compute
    reserve(ledger, "acme", charged, request)            # the charge every call into the version shares
    result = run(ledger, "acme", charged, load=lambda: load_net(registry, generator, bucket))

A run given shards writes those shards only and leaves the charge reserved; the run without shards (every shard,
reusing those already written) finishes the version, its record and upload manifest, and commits the charge (or
releases it when it fails).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

from torch import nn

from umbra.anonymization import anonymize as anon
from umbra.anonymization import dataset as anonymized_dataset
from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
from umbra.classifiers.registry import ModelRegistry
from umbra.diffusion.generator import build
from umbra.runtime import names
from umbra.runtime.errors import InvalidInput
from umbra.services.anonymizer import convert
from umbra.services.convert import budget_from_proto
from umbra.services.ledger_client import LedgerClient
from umbra.services.references import dataset_reader
from umbra.storage import keys
from umbra.storage.base import ObjectStore
from umbra.storage.datasets import DatasetReader


@dataclasses.dataclass(frozen=True)
class Charged:
    """A job and the ledger charge that pays for it."""

    job: object
    charge: str  # the charge's request_id in the ledger ("" when nothing is charged)


def generator(registry: ModelRegistry, bucket: str, ref, field: str) -> anon.Generator:
    model, version = names.model_ref(ref, field)
    stored = registry.get(bucket, model, version, kind="generator", field=field)  # NOT_FOUND for others'
    return anon.Generator(model, version, stored.config, stored.record)


def load_net(registry: ModelRegistry, generator: anon.Generator, bucket: str) -> nn.Module:
    net = build(generator.config)
    net.load_state_dict(registry.weights(bucket, generator.model, generator.version))
    return net.eval()


def check(registry: ModelRegistry, bucket: str, settings: an.AnonymizationSettings, dataset: str,
          columns: list[str], image_size: int) -> anon.Request:
    """The settings checked against their generator (and the dataset's columns and size, when given)."""
    found = generator(registry, bucket, settings.generator, "settings.generator")
    return anon.check(found, dataset_id=dataset or found.trained_on,
                      label_columns=columns or list(found.config.classes),
                      image_size=image_size or found.config.image_size,
                      protected=list(settings.protected_attributes), kept=list(settings.kept_attributes),
                      intensity=settings.intensity, steps=settings.steps, seed=settings.seed)


def checked(registry: ModelRegistry, bucket: str, settings: an.AnonymizationSettings,
            reader: DatasetReader) -> anon.Request:
    return check(registry, bucket, settings, reader.dataset, reader.header.label_columns, reader.header.image_size)


def plan(store: ObjectStore, registry: ModelRegistry, tenant: str, request: an.AnonymizeDatasetRequest) -> Charged:
    """Every check of an AnonymizeDatasetRequest, by field, before any compute; the job writes `request.shards`
    (none: every shard, then the record and the upload manifest)."""
    bucket = keys.bucket(tenant)
    reader = dataset_reader(store, bucket, request.dataset, "dataset")
    request_checked = checked(registry, bucket, request.settings, reader)
    output = names.dataset(request.output_dataset or request.dataset.dataset, "output_dataset")
    if request.output_version < 1:
        raise InvalidInput("output_version", "is required: the version the coordinator reserved for the output")
    # every call into one version (each replica's or index's shards, the finishing call) is the same request
    fingerprint = convert.fingerprint(request, ignore=("request_id", "shards"))
    job = anonymized_dataset.plan(store, bucket, reader, request_checked, output=(output, request.output_version),
                                  fingerprint=fingerprint, shards=list(request.shards) if request.shards else None)
    return Charged(job, convert.dataset_charge_id(job.out.output, fingerprint))


def reserve(ledger: LedgerClient, tenant: str, charged: Charged, request: an.AnonymizeDatasetRequest) -> None:
    """Reserves the version's charge in the coordinator's ledger (refused before any work when the budget is
    spent); every call into the version shares it, so a repeated reservation charges nothing more."""
    job: anonymized_dataset.Job = charged.job
    ledger.reserve(tenant, job.reader.dataset,
                   dataclasses.replace(job.request.cost.charged, description="dataset anonymization"),
                   request_id=charged.charge, spent_by="AnonymizeDataset",
                   limit=budget_from_proto(request.settings.budget, "settings.budget"))


def run(ledger: LedgerClient, tenant: str, charged: Charged, load: Callable[[], nn.Module], *,
        progress: Callable[[int, int, int], None] = lambda done, total, shards: None,
        cancelled: Callable[[], bool] = lambda: False) -> anonymized_dataset.Result:
    """Runs the job (umbra.anonymization.dataset.run). A run given shards leaves the charge reserved: the run that
    finishes the version settles it."""
    job: anonymized_dataset.Job = charged.job
    settles = ledger.settles(tenant, charged.charge) if job.shards is None else contextlib.nullcontext()
    with settles:
        return anonymized_dataset.run(job, load, progress=progress, cancelled=cancelled)
