"""`make demo`: run the furthest part of Umbra's protection pipeline that works, on this machine.

1. start a real S3 server (Ceph RADOS Gateway, deploy/s3/rgw.sh) and the five services, each its own process;
2. check each service's health and call it with its credential;
3. create a tenant, generate labelled synthetic faces, upload them as a dataset (validated, sharded, sent to
   S3 through presigned URLs, committed), and export the committed version back to check it byte for byte;
4. write what was seen to out/demo/demo.json and stop everything (unless --keep).

Later steps (training, anonymization, distortion, unlearning) are added here as they are built.

    python scripts/demo.py [--keep] [--faces N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc

from umbra.cli import local
from umbra.client import UmbraRpcError, health_of, layout
from umbra.client.channel import open_channel
from umbra.client.datasets import DatasetsClient
from umbra.client.operations import OperationsClient
from umbra.coordinator.v1 import job_service_pb2, job_service_pb2_grpc, tenant_service_pb2, tenant_service_pb2_grpc
from umbra.dataset import synthetic

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out" / "demo"
RGW = ROOT / "deploy" / "s3" / "rgw.sh"


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def start_s3() -> dict[str, str]:
    subprocess.run(["bash", str(RGW), "start"], check=True)
    lines = subprocess.run(["bash", str(RGW), "env"], capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in lines.splitlines() if "=" in line)


def digests(folder: Path) -> list[str]:
    return sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in (folder / "images").iterdir())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="leave the S3 server and the services running")
    parser.add_argument("--faces", type=int, default=500, help="synthetic faces to upload (default 500)")
    args = parser.parse_args()
    home = layout.home()
    report: dict = {"home": str(home), "services": {}}
    step("1. starting a real S3 server and the five services")
    s3 = start_s3()
    os.environ.update(s3, UMBRA_STORE="s3")  # the services started next inherit these
    started = time.monotonic()
    if local.up(list(layout.SERVICES)) != 0:
        return 1
    report["start_seconds"] = round(time.monotonic() - started, 2)
    try:
        step("2. calling each service with its credential")
        admin_key = (home / "secrets" / "admin-key").read_text().strip()
        service_token = (home / "secrets" / "service-token").read_text().strip()
        for service in layout.SERVICES:
            target = layout.endpoint(service).target
            credential = admin_key if service == "coordinator" else service_token
            listed = list(OperationsClient(open_channel(target, credential)).list())
            report["services"][service] = {"address": target, "health": health_of(target), "operations": len(listed)}
            print(f"   {service:12} {target:21} health {report['services'][service]['health']}")

        step("3. a tenant uploads a face dataset")
        coordinator = layout.endpoint("coordinator").target
        tenant_id = f"demo-{secrets.token_hex(3)}"
        created = tenant_service_pb2_grpc.TenantServiceStub(open_channel(coordinator, admin_key)).CreateTenant(
            tenant_service_pb2.CreateTenantRequest(tenant_id=tenant_id), timeout=30)
        key_file = OUT / "tenant-api-key"
        OUT.mkdir(parents=True, exist_ok=True)
        key_file.write_text(created.api_key_secret + "\n")
        key_file.chmod(0o600)
        print(f"   tenant {tenant_id}: bucket {created.tenant.bucket}, API key in {key_file}")
        faces = OUT / "faces"
        shutil.rmtree(faces, ignore_errors=True)
        synthetic.write_folder(faces, args.faces, size=64, seed=0)
        print(f"   {args.faces} synthetic faces (gender, skin tone, glasses, smile, hair colour, age) in {faces}")
        client = DatasetsClient(open_channel(coordinator, created.api_key_secret))
        began = time.monotonic()
        version = client.upload(faces, "faces", progress=True)
        seconds = time.monotonic() - began
        print(f"   {version.name}: {version.sample_count} images, {version.shard_count} shard(s), splits "
              f"{dict(version.split_counts)}, labels {list(version.label_columns)} ({seconds:.1f} s)")
        exported = OUT / "faces-export"
        shutil.rmtree(exported, ignore_errors=True)
        client.export(version.name, exported)
        identical = digests(exported) == digests(faces)
        print(f"   exported back to {exported}: byte-identical to the source: {identical}")
        report["dataset"] = {"tenant": tenant_id, "version": version.name, "images": version.sample_count,
                             "shards": version.shard_count, "upload_seconds": round(seconds, 2),
                             "exported_identical": identical, "export_folder": str(exported)}

        step("4. the protection job itself is not built yet, and says so")
        try:
            job_service_pb2_grpc.JobServiceStub(open_channel(coordinator, created.api_key_secret)).ListProtectionJobs(
                job_service_pb2.ListProtectionJobsRequest(), timeout=10)
        except grpc.RpcError as exc:
            err = UmbraRpcError.from_rpc_error(exc)
            report["protection_job"] = {"code": err.code.name, "message": err.message}
            print(f"   ListProtectionJobs -> {err.code.name}: {err.message}")
    finally:
        if not args.keep:
            step("stopping the services and the S3 server")
            local.down(list(layout.SERVICES))
            subprocess.run(["bash", str(RGW), "stop"], check=False)
    tmp = OUT / "demo.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(OUT / "demo.json")
    print(f"\nResults: {OUT / 'demo.json'} (dataset exported to {OUT / 'faces-export'})\nService logs: {home / 'logs'}")
    if args.keep:
        print("Still running: `.venv/bin/umbra status`; stop with `.venv/bin/umbra down` and `deploy/s3/rgw.sh stop`.")
    healthy = all(s["health"] == "SERVING" for s in report["services"].values())
    return 0 if healthy and report.get("dataset", {}).get("exported_identical") else 1


if __name__ == "__main__":
    sys.exit(main())
