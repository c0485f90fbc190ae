"""`make demo`: run the furthest part of Umbra's protection pipeline that works, on this machine.

Today that is the platform: start the five services as separate processes, check each one's health, call
each one through the SDK with its credential, show that a not-yet-built RPC says so (UNIMPLEMENTED), and write
what was seen to out/demo/platform.json. Later steps (ingest, training, anonymization, distortion,
unlearning) are added here as they are built.

    python scripts/demo.py [--keep]     # --keep leaves the services running (stop with `umbra down`)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import grpc

from umbra.cli import local
from umbra.client import Client, UmbraRpcError, health_of, layout
from umbra.client.channel import open_channel
from umbra.client.operations import OperationsClient
from umbra.coordinator.v1 import job_service_pb2

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out" / "demo"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="leave the services running")
    args = parser.parse_args()
    home = layout.home()
    print(f"== 1. starting the services (state in {home})")
    started = time.monotonic()
    if local.up(list(layout.SERVICES)) != 0:
        return 1
    report: dict = {"home": str(home), "start_seconds": round(time.monotonic() - started, 2), "services": {}}
    try:
        print("\n== 2. calling each service with its credential")
        secrets = home / "secrets"
        admin_key = (secrets / "admin-key").read_text().strip()
        service_token = (secrets / "service-token").read_text().strip()
        for service in layout.SERVICES:
            target = layout.endpoint(service).target
            credential = admin_key if service == "coordinator" else service_token
            operations = OperationsClient(open_channel(target, credential))
            begun = time.monotonic()
            listed = list(operations.list())
            report["services"][service] = {
                "address": target,
                "health": health_of(target),
                "list_operations": len(listed),
                "list_operations_ms": round((time.monotonic() - begun) * 1000, 1),
            }
            print(f"   {service:12} {target:21} health {report['services'][service]['health']:8} "
                  f"operations {len(listed)}")
        print("\n== 3. the protection job itself is not built yet, and says so")
        with Client(layout.endpoint("coordinator").target, admin_key) as client:
            try:
                client.jobs.ListProtectionJobs(job_service_pb2.ListProtectionJobsRequest(), timeout=10)
                report["protection_job"] = "available"
            except grpc.RpcError as exc:
                err = UmbraRpcError.from_rpc_error(exc)
                report["protection_job"] = {"code": err.code.name, "reason": err.reason, "message": err.message}
                print(f"   ListProtectionJobs -> {err.code.name} ({err.reason}): {err.message}")
    finally:
        if not args.keep:
            print("\n== 4. stopping the services")
            local.down(list(layout.SERVICES))
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = OUT / "platform.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(OUT / "platform.json")
    print(f"\nResults: {OUT / 'platform.json'}\nService logs: {home / 'logs'}")
    if args.keep:
        print("The services are still running: `.venv/bin/umbra status`, `.venv/bin/umbra down`.")
    healthy = all(s["health"] == "SERVING" for s in report["services"].values())
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
