"""`umbra job anonymize`: one index of a Kubernetes Indexed Job that anonymizes a whole dataset version, with no
gRPC server (the chart's `indexedJobs.anonymize`, docs/deployment.md).

    JOB_COMPLETION_INDEX=1 UMBRA_JOB_COMPLETIONS=4 UMBRA_JOB_TENANT=acme \\
        umbra job anonymize --request /etc/umbra/job/request.json

The request is an AnonymizeDatasetRequest (JSON as google.protobuf.json_format writes it, or the binary message),
its `shards` empty and its `output_version` reserved beforehand (CreateDatasetVersion), as for the gRPC call. The
rest of the configuration is the anonymizer's own (UMBRA_STORE and UMBRA_S3_*, UMBRA_COORDINATOR_URL and
UMBRA_SERVICE_TOKEN for the privacy ledger, UMBRA_LOG_LEVEL). Index i of k, for a version of n output shards:

1. plans the request as the anonymizer's AnonymizeDataset does (umbra.services.anonymizer.dataset_run: every check
   by field, before any compute) and reserves its privacy charge, the one charge every call into the version
   shares, whichever way it runs (refused here when the budget is spent);
2. writes the shards [i·n//k, (i+1)·n//k) as a replica given them in `shards` does: the same bytes, and a shard an
   earlier try of this index (or anyone) finished is reused, so a retried index redoes only its unfinished shards;
3. if every shard of the version is then written, finishes the version as the call without `shards` does: the
   private record and the upload manifest, and the charge committed. The index that ends last finds every shard
   written; two that end at the same moment may both finish, which writes the same bytes (one that comes after a
   finished version answers from its record and computes nothing). A retried index finds the version finished
   and only commits the charge again (which changes nothing once it is committed).

Whoever reserved the version commits it (CommitDatasetVersion) once the Job is complete, as after the gRPC path.
Exit status: 0 done; 2 a bad setting or request, or a refusal no retry changes (missing dataset or generator, a
spent budget, a committed version): the chart's podFailurePolicy fails the index at once; 1 anything else (the
coordinator or the store out of reach): retried, up to backoffLimitPerIndex; 143 stopped by SIGTERM (the shards
written so far are kept).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from umbra.anonymization import dataset as anonymized_dataset
from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
from umbra.classifiers.registry import ModelRegistry
from umbra.dataset import manifest as mf
from umbra.runtime import logs, tracing
from umbra.runtime.config import ConfigError, ServiceConfig
from umbra.runtime.errors import Cancelled, FailedPrecondition, InvalidInput, NotFound, UmbraError
from umbra.services.anonymizer import dataset_run
from umbra.services.ledger_client import LedgerClient
from umbra.storage import open_store
from umbra.storage.base import ObjectStore

log = logging.getLogger(__name__)

INDEX = "JOB_COMPLETION_INDEX"  # set by Kubernetes in the pods of an Indexed Job
COMPLETIONS = "UMBRA_JOB_COMPLETIONS"  # the Job's `completions` (the chart sets it)
REQUEST = "UMBRA_JOB_REQUEST"  # the request file
TENANT = "UMBRA_JOB_TENANT"
DONE, FAILED, REFUSED, STOPPED = 0, 1, 2, 143
PROG = "umbra job anonymize"


@dataclass(frozen=True)
class Settings:
    """What one index runs: read once, in main."""

    index: int
    completions: int
    tenant: str
    request: an.AnonymizeDatasetRequest


def index_shards(index: int, completions: int, total: int) -> range:
    """The output shards that index `index` of `completions` writes: [i·n//k, (i+1)·n//k). The ranges are contiguous,
    cover every shard once and differ in size by one at most; an index gets none when there are more indices than
    shards."""
    return range(index * total // completions, (index + 1) * total // completions)


def read_request(path: str, field: str = "--request") -> an.AnonymizeDatasetRequest:
    """An AnonymizeDatasetRequest from a file: JSON (google.protobuf.json_format) or the binary message."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(field, f"{path} cannot be read: {exc.strerror or exc}") from None
    request = an.AnonymizeDatasetRequest()
    try:
        if data.lstrip()[:1] == b"{":
            json_format.Parse(data, request)
        else:
            request.ParseFromString(data)
    except (json_format.ParseError, DecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(field, f"{path} is not an AnonymizeDatasetRequest (JSON or binary): {exc}") from None
    if not request.HasField("dataset"):
        raise InvalidInput("dataset", f"is required (in {path}): the dataset version to anonymize")
    if request.shards:
        raise InvalidInput("shards", f"must be empty (in {path}): the Job deals the shards to its indices "
                                     f"({INDEX} of {COMPLETIONS})")
    return request


def _whole_number(value: str | None, name: str, *, minimum: int, unset: str) -> int:
    if value is None or value.strip() == "":
        raise InvalidInput(name, f"is not set: {unset}")
    try:
        number = int(value)
    except ValueError:
        raise InvalidInput(name, f"{value!r} is not a whole number") from None
    if number < minimum:
        raise InvalidInput(name, f"{number} is below {minimum}")
    return number


def settings_from(argv: Sequence[str] | None, env: Mapping[str, str]) -> Settings:
    """The index's settings from its flags, each defaulting to its environment variable. InvalidInput names the
    variable (or flag) that is missing or wrong."""
    parser = argparse.ArgumentParser(prog=PROG, description="Run one index of an Indexed Job anonymizing a dataset "
                                     "version (no gRPC server).")
    parser.add_argument("--request", default=env.get(REQUEST), help=f"the AnonymizeDatasetRequest file ({REQUEST})")
    parser.add_argument("--tenant", default=env.get(TENANT), help=f"the tenant whose data it is ({TENANT})")
    parser.add_argument("--index", default=env.get(INDEX), help=f"this index ({INDEX}, set by Kubernetes)")
    parser.add_argument("--completions", default=env.get(COMPLETIONS), help=f"how many indices ({COMPLETIONS})")
    args = parser.parse_args(argv)
    index = _whole_number(args.index, INDEX, minimum=0, unset="Kubernetes sets it in the pods of a Job with "
                          "completionMode: Indexed; elsewhere pass --index")
    completions = _whole_number(args.completions, COMPLETIONS, minimum=1, unset="set it to the Job's completions, "
                                "or pass --completions")
    if index >= completions:
        raise InvalidInput(INDEX, f"{index} is out of range: with {COMPLETIONS}={completions} an index is 0 to "
                                  f"{completions - 1}")
    if not args.tenant:
        raise InvalidInput(TENANT, "is not set: name the tenant whose dataset it is (or pass --tenant)")
    if not args.request:
        raise InvalidInput(REQUEST, "is not set: name the AnonymizeDatasetRequest file (or pass --request)")
    return Settings(index, completions, args.tenant, read_request(args.request))


def run_index(settings: Settings, store: ObjectStore, ledger: LedgerClient, *,
              cancelled: Callable[[], bool] = lambda: False) -> dict:
    """Writes this index's shards and, when every shard is then written, finishes the version; returns a summary."""
    registry = ModelRegistry(store)
    tenant, request = settings.tenant, settings.request
    whole = dataset_run.plan(store, registry, tenant, request)  # every check; the version's shards, all of them
    job: anonymized_dataset.Job = whole.job
    total = len(job.chunks)
    mine = index_shards(settings.index, settings.completions, total)
    dataset_run.reserve(ledger, tenant, whole, request)

    def load():
        log.info("loading the generator")
        return dataset_run.load_net(registry, job.request.generator, job.out.bucket)

    reported = {"shards": -1}

    def progress(done: int, images: int, shards: int) -> None:  # a line per shard written
        if shards != reported["shards"]:
            reported["shards"] = shards
            log.info("index %d: %d of %d images, %d of %d shards", settings.index, done, images, shards, len(mine))

    summary = {"index": settings.index, "completions": settings.completions, "shards_total": total,
               "shards": [mine.start, mine.stop], "images": 0, "finished": False, "record": "", "manifest": ""}
    if mine:
        part = an.AnonymizeDatasetRequest()
        part.CopyFrom(request)
        part.shards[:] = list(mine)
        written = dataset_run.run(ledger, tenant, dataset_run.plan(store, registry, tenant, part), load,
                                  progress=progress, cancelled=cancelled)
        summary["images"] = written.samples
    others = (c for c in range(total) if c not in mine)  # this index's own are written
    unwritten = next((c for c in others if job.out.finished(mf.shard_name(c)) is None), None)
    if unwritten is not None and not job.out.staged():
        log.info("index %d: shard %d is not written yet; the index that writes the last shard finishes the version",
                 settings.index, unwritten)
        return summary
    result = dataset_run.run(ledger, tenant, whole, load, cancelled=cancelled)  # the record, manifest, charge
    summary.update(finished=True, record=result.record_key, manifest=result.manifest_key)
    log.info("index %d finished datasets/%s/versions/%d (%d images); commit it with CommitDatasetVersion",
             settings.index, *job.out.output, result.samples)
    return summary


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    try:
        settings = settings_from(argv, env)
        config = ServiceConfig.from_env("anonymizer", env)
    except (InvalidInput, ConfigError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return REFUSED
    logs.configure("anonymizer-job", config.log_level)
    tracing.configure("anonymizer-job", env)  # its spans, S3 and ledger calls included, when OTLP is configured
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())  # stops between batches; written shards stay
    ledger = LedgerClient(config.coordinator_url, config.service_token, commit_patience=config.ledger_commit_seconds)
    try:
        with tracing.tracer(__name__).start_as_current_span("indexed job anonymize", attributes={
                "umbra.tenant": settings.tenant, "umbra.job_index": settings.index,
                "umbra.job_completions": settings.completions}):
            summary = run_index(settings, open_store(config.store), ledger, cancelled=stop.is_set)
    except Cancelled:
        print(f"{PROG}: stopped (SIGTERM); the shards written so far are kept for the next try", file=sys.stderr)
        return STOPPED
    except (InvalidInput, NotFound, FailedPrecondition) as exc:  # the same on every try
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        return REFUSED
    except UmbraError as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        return FAILED
    finally:
        tracing.shutdown()  # sends what is batched
    print(json.dumps(summary), flush=True)
    return DONE


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main())
