"""Benchmark: one anonymizer replica against two, on the same AnonymizeDataset.

    python -m benchmarks.anonymizer_sharding [--faces 512] [--rounds 1] [--replica-threads N] [--s3]

Starts the coordinator and two anonymizer processes (each its own home and operations, one object store: a local
folder, or the project's S3 server with --s3), uploads synthetic 64 px faces, writes a 32 px generator with the
anonymizer benchmark's architecture (random weights: they do not change the work), and anonymizes the same
request (gender protected, skin tone kept, the default intensity) into fresh reserved versions: on one replica
(one AnonymizeDataset call) and across both (umbra.services.coordinator.sharding.anonymize_sharded, the finishing
call included), `--rounds` times each, alternating. Every version's staged shards, upload manifest and record
must be byte-identical to the first one's. Writes out/bench/anonymizer-sharding.json: each run's wall time
(from the first call to the result), the speed-up of two replicas over one, and the load average around them
(the development machines are shared). `--replica-threads 1` gives each replica one core: one replica then
uses one of the two cores, two replicas both.
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import torch

from benchmarks.common import create_tenant, free_port, running_services, s3_server, write_result
from umbra.anonymization.intensity import DEFAULT_INTENSITY
from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
from umbra.anonymizer.v1 import anonymizer_service_pb2_grpc
from umbra.classifiers.registry import ModelRegistry
from umbra.client.channel import open_channel
from umbra.client.datasets import DatasetsClient
from umbra.client.operations import OperationsClient
from umbra.common.v1 import refs_pb2
from umbra.coordinator.v1 import dataset_service_pb2 as cds
from umbra.coordinator.v1 import dataset_service_pb2_grpc
from umbra.dataset import synthetic
from umbra.diffusion.attributes import schema_for
from umbra.diffusion.generator import build
from umbra.diffusion.generator_config import GeneratorConfig
from umbra.services.coordinator.sharding import anonymize_sharded
from umbra.storage import keys
from umbra.storage.datasets import DatasetReader

SIZE = 32  # the generator's, as in benchmarks.anonymizer; the faces are 64 px


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=512, help="synthetic 64 px faces (512: two output shards)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each, alternating")
    parser.add_argument("--s3", action="store_true", help="the project's S3 server instead of a local folder")
    parser.add_argument("--replica-threads", type=int, default=0,
                        help="torch threads of each anonymizer process (OMP_NUM_THREADS; default: torch's own)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="uas-", dir="/tmp") as scratch, ExitStack() as stack:
        scratch = Path(scratch)
        base = dict(os.environ, UMBRA_SERVICE_TOKEN=secrets.token_urlsafe(24),
                    UMBRA_ADMIN_KEY=secrets.token_urlsafe(24))
        if args.s3:
            base.update(stack.enter_context(s3_server()), UMBRA_STORE="s3")
        else:
            base.update(UMBRA_STORE="local", UMBRA_STORE_DIR=str(scratch / "objects"))
        targets = []
        for name, service in (("coordinator", "coordinator"), ("replica-0", "anonymizer"),
                              ("replica-1", "anonymizer")):
            env = dict(base, UMBRA_HOME=str(scratch / name), **{f"UMBRA_{service.upper()}_PORT": str(free_port())})
            if service == "anonymizer":
                env["UMBRA_COORDINATOR_URL"] = targets[0]
                if args.replica_threads:
                    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.replica_threads)
            targets.append(stack.enter_context(running_services(env, [service]))[service])
        coordinator, replicas = targets[0], targets[1:]
        tenant, key = create_tenant(coordinator, base["UMBRA_ADMIN_KEY"], budget=(1e9, 0.5))
        faces = synthetic.write_folder(scratch / "faces", args.faces, size=64, seed=11)
        DatasetsClient(open_channel(coordinator, key)).upload(faces, "faces", progress=False)
        store = _store(base)
        bucket = keys.bucket(tenant)
        _write_generator(store, bucket)
        datasets = dataset_service_pb2_grpc.DatasetServiceStub(open_channel(coordinator, key))
        runs, reference = [], None
        for _ in range(args.rounds):
            for count in (1, 2):
                version = int(datasets.CreateDatasetVersion(cds.CreateDatasetVersionRequest(
                    parent="datasets/faces", shard_count=1), timeout=30).dataset_version.name.rsplit("/", 1)[1])
                load_before, began = os.getloadavg()[0], time.perf_counter()
                if count == 1:
                    result = _one(replicas[0], base["UMBRA_SERVICE_TOKEN"], tenant, _request(version))
                else:
                    result = anonymize_sharded(replicas, base["UMBRA_SERVICE_TOKEN"], tenant, _request(version),
                                               store=store, poll_seconds=0.5)
                seconds = time.perf_counter() - began
                staged = _written(store, bucket, version)
                reference = reference or staged
                runs.append({"replicas": count, "seconds": round(seconds, 2), "images": result.image_count,
                             "images_per_s": round(result.image_count / seconds, 3),
                             "shards": sum(k.startswith("upload/shards/") for k in staged),
                             "identical_to_first": staged == reference,
                             "operations": [_operations(target, base["UMBRA_SERVICE_TOKEN"], tenant, began)
                                            for target in replicas[:count]],
                             "load_average_before": load_before, "load_average_after": os.getloadavg()[0]})
                print(runs[-1], flush=True)
    one = [r["seconds"] for r in runs if r["replicas"] == 1]
    two = [r["seconds"] for r in runs if r["replicas"] == 2]
    result = {"faces": args.faces, "face_size": 64, "generator_size": SIZE, "intensity": DEFAULT_INTENSITY,
              "store": "s3" if args.s3 else "local", "cpus": os.cpu_count(),
              "replica_threads": args.replica_threads or torch.get_num_threads(),
              "runs": runs, "one_replica_s": min(one), "two_replicas_s": min(two),
              "speedup": round(min(one) / min(two), 3), "all_identical": all(r["identical_to_first"] for r in runs)}
    print(f"one replica {result['one_replica_s']} s, two {result['two_replicas_s']} s: speed-up "
          f"{result['speedup']}x; byte-identical: {result['all_identical']}; written to "
          f"{write_result('anonymizer-sharding', result)}")
    return 0 if result["all_identical"] else 1


def _store(env: dict[str, str]):
    if env["UMBRA_STORE"] == "s3":
        from umbra.storage.s3 import S3ObjectStore

        return S3ObjectStore(env["UMBRA_S3_ENDPOINT"], env["UMBRA_S3_ACCESS_KEY"], env["UMBRA_S3_SECRET_KEY"])
    from umbra.storage.local import LocalObjectStore

    return LocalObjectStore(Path(env["UMBRA_STORE_DIR"]))


def _write_generator(store, bucket: str) -> None:
    columns: dict[str, list[str]] = {}
    for sample in DatasetReader(store, bucket, "faces", 1).samples():
        for name, value in sample.labels.items():
            columns.setdefault(name, []).append(value)
    config = GeneratorConfig(image_size=SIZE, attributes=schema_for(columns, ["gender", "skin_tone"]))
    torch.manual_seed(0)
    ModelRegistry(store).write(bucket, "gen", config, build(config).state_dict(),
                               {"kind": "generator", "privacy": {"dp": False},
                                "dataset": {"dataset": "datasets/public", "version": 1}})


def _request(version: int) -> an.AnonymizeDatasetRequest:
    settings = an.AnonymizationSettings(generator=refs_pb2.ModelRef(model="models/gen", version=1),
                                        protected_attributes=["gender"], kept_attributes=["skin_tone"],
                                        intensity=DEFAULT_INTENSITY, seed=3)
    return an.AnonymizeDatasetRequest(settings=settings, dataset=refs_pb2.DatasetRef(dataset="datasets/faces",
                                                                                     version=1),
                                      output_dataset="datasets/faces", output_version=version)


def _one(target: str, token: str, tenant: str, request: an.AnonymizeDatasetRequest) -> an.AnonymizationResult:
    channel = open_channel(target, token, tenant=tenant)
    op = anonymizer_service_pb2_grpc.AnonymizerServiceStub(channel).AnonymizeDataset(request, timeout=60).operation
    return OperationsClient(channel).result(op.name, an.AnonymizationResult, poll_seconds=0.5, timeout=3600)


def _operations(target: str, token: str, tenant: str, since: float) -> list[dict]:
    """The replica's AnonymizeDataset operations of the run just measured: shards written, seconds, ok."""
    found = []
    wall = time.time() - (time.perf_counter() - since)  # the run's start, in wall-clock time
    for op in OperationsClient(open_channel(target, token, tenant=tenant)).list():
        metadata = an.AnonymizeDatasetMetadata()
        if not op.metadata.Unpack(metadata):
            continue
        progress = metadata.progress
        started, ended = progress.create_time.ToNanoseconds() / 1e9, progress.end_time.ToNanoseconds() / 1e9
        if started >= wall - 1:
            found.append({"shards_done": metadata.shards_done, "images": progress.done,
                          "start_s": round(started - wall, 1), "seconds": round(ended - started, 1),
                          "ok": op.done and not op.HasField("error")})
    return sorted(found, key=lambda o: o["start_s"])


def _written(store, bucket: str, version: int) -> dict[str, bytes]:
    prefix = keys.version_prefix("faces", version)
    return {info.key.removeprefix(prefix): store.get(bucket, info.key) for info in store.list(bucket, prefix)
            if not info.key.endswith("/run.json")}


if __name__ == "__main__":
    raise SystemExit(main())
