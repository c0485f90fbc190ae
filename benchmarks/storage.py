"""Storage: ingest a face folder into the local S3 server through the coordinator, read it back as a stream,
and compare with fetching the same images one object at a time with the plain `minio` client.

    python -m benchmarks.storage [--quick] [--data DIR]

Starts what it needs (the S3 server from deploy/s3/rgw.sh and a coordinator process) and stops it again.
Writes out/bench/storage.json and out/bench/storage.png with:
  images, ingest_images_per_s (validate + shard + upload + commit, end to end through the coordinator),
  read_images_per_s (DatasetReader: one GET per shard, every shard's SHA-256 checked),
  raw_minio_get_images_per_s (the baseline: one GET per image with the plain minio client),
  read_vs_raw_ratio, roundtrip_identical (every exported image byte-identical to its source).
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import OUT, default_data, free_port, s3_server, write_result
from umbra.client import health_of
from umbra.client.channel import open_channel
from umbra.client.datasets import DatasetsClient
from umbra.coordinator.v1 import tenant_service_pb2, tenant_service_pb2_grpc
from umbra.storage.datasets import DatasetReader
from umbra.storage.s3 import S3ObjectStore


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="read passes: 1 instead of 3")
    parser.add_argument("--data", type=Path, help="a folder with images/ and labels.csv")
    args = parser.parse_args()
    passes = 1 if args.quick else 3
    with tempfile.TemporaryDirectory(prefix="umbra-bench-") as scratch, s3_server() as s3:
        folder, what = default_data(args.data, Path(scratch))
        sources = {p.name: p.read_bytes() for p in sorted((folder / "images").iterdir())}
        print(f"data: {what}, {len(sources)} images")
        port, admin = free_port(), secrets.token_urlsafe(24)
        env = dict(os.environ, UMBRA_HOME=str(Path(scratch) / "home"), UMBRA_COORDINATOR_PORT=str(port),
                   UMBRA_SERVICE_TOKEN=secrets.token_urlsafe(24), UMBRA_ADMIN_KEY=admin, UMBRA_STORE="s3", **s3)
        coordinator = subprocess.Popen([sys.executable, "-m", "umbra.cli.main", "serve", "coordinator"], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while health_of(f"127.0.0.1:{port}", timeout=0.5) != "SERVING":
                time.sleep(0.2)
            tenant = f"bench-{secrets.token_hex(3)}"
            key = tenant_service_pb2_grpc.TenantServiceStub(open_channel(f"127.0.0.1:{port}", admin)).CreateTenant(
                tenant_service_pb2.CreateTenantRequest(tenant_id=tenant), timeout=30).api_key_secret
            client = DatasetsClient(open_channel(f"127.0.0.1:{port}", key))

            started = time.perf_counter()
            # drop_invalid: real folders have problems (the face sample holds 12 duplicate images); they are
            # reported by name and left out, and the count is in the result.
            version = client.upload(folder, "faces", progress=False, drop_invalid=True)
            ingest_seconds = time.perf_counter() - started
            print(f"ingest: {version.sample_count} images in {ingest_seconds:.1f} s ({version.shard_count} shards)")

            store = S3ObjectStore(s3["UMBRA_S3_ENDPOINT"], s3["UMBRA_S3_ACCESS_KEY"], s3["UMBRA_S3_SECRET_KEY"])
            bucket = f"umbra-{tenant}"
            reader = DatasetReader(store, bucket, "faces", 1)
            samples = list(reader.samples())
            assert len(samples) == version.sample_count
            # The baseline's layout: one object per image (setup, not timed).
            images = {s.key: img for s, img in DatasetReader(store, bucket, "faces", 1).iter_images()}
            for k, img in images.items():
                store.client.put_object(bucket, f"raw/{k}", io.BytesIO(img), len(img))

            read_rates, raw_rates = [], []
            for _ in range(passes):
                started = time.perf_counter()
                count = sum(1 for _ in DatasetReader(store, bucket, "faces", 1).iter_images())
                read_rates.append(count / (time.perf_counter() - started))
                started = time.perf_counter()
                for k in images:
                    response = store.client.get_object(bucket, f"raw/{k}")
                    response.read()
                    response.close()
                    response.release_conn()
                raw_rates.append(len(images) / (time.perf_counter() - started))

            exported = Path(scratch) / "exported"
            client.export(version.name, exported)
            back = {p.name: p.read_bytes() for p in (exported / "images").iterdir()}
            identical = len(back) == version.sample_count and all(sources.get(n) == b for n, b in back.items())
        finally:
            coordinator.send_signal(signal.SIGTERM)
            coordinator.wait(timeout=60)
    read_rate, raw_rate = max(read_rates), max(raw_rates)
    result = {
        "data": what,
        "images": len(sources),
        "committed_images": version.sample_count,
        "left_out_images": len(sources) - version.sample_count,
        "shards": version.shard_count,
        "ingest_seconds": round(ingest_seconds, 2),
        "ingest_images_per_s": round(version.sample_count / ingest_seconds, 1),
        "read_images_per_s": round(read_rate, 1),
        "raw_minio_get_images_per_s": round(raw_rate, 1),
        "read_vs_raw_ratio": round(read_rate / raw_rate, 2),
        "read_passes": passes,
        "roundtrip_identical": identical,
    }
    path = write_result("storage", result)
    plot(result, OUT / "storage.png")
    print(result)
    print(f"wrote {path} and {OUT / 'storage.png'}")
    return 0


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["ingest", "streaming read", "one GET per image"]
    values = [result["ingest_images_per_s"], result["read_images_per_s"], result["raw_minio_get_images_per_s"]]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(names, values, color=["#888", "#1f77b4", "#d62728"])
    ax.set_ylabel("images per second")
    ax.set_title(f"{result['images']} images, local S3 (Ceph RGW): read {result['read_vs_raw_ratio']}x raw")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
