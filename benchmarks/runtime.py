"""What the shared service runtime costs per call, measured against a bare gRPC server.

    python -m benchmarks.runtime [--quick] [--data DIR]

Three servers, each its own process on 127.0.0.1, called one after another from this process:

- `bare`: grpc.server with only the standard health servicer (no interceptor, no auth, no logging);
- `runtime_health`: a real Umbra service (training), Health/Check: exempt from auth, through the interceptor;
- `runtime_authenticated`: the same service, google.longrunning.Operations/ListOperations with the service
  credential: authentication, JSON log line, SQLite query, pagination.

Writes out/bench/runtime.json (calls per second and latency percentiles per path, and the ratios to bare)
and out/bench/runtime.png. `--data` is accepted for uniformity and unused: no images are involved here.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc
from google.longrunning import operations_pb2_grpc
from google.longrunning import operations_proto_pb2 as lro
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from benchmarks.common import OUT, free_port, write_result
from umbra.client import health_of
from umbra.client.channel import open_channel

def serve_bare(port: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    signal.sigwait({signal.SIGTERM})
    server.stop(1).wait()


def start(args: list[str], port: int, env: dict) -> subprocess.Popen:
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while health_of(f"127.0.0.1:{port}", timeout=0.5) != "SERVING":
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server {args} did not start")
        time.sleep(0.1)
    return proc


def measure(fn, seconds: float) -> dict:
    for _ in range(50):  # warm up the channel and the server's threads
        fn()
    latencies = []
    end = time.perf_counter() + seconds
    while (now := time.perf_counter()) < end:
        fn()
        latencies.append(time.perf_counter() - now)
    latencies.sort()
    pick = lambda q: latencies[min(int(q * len(latencies)), len(latencies) - 1)] * 1000  # noqa: E731
    return {"calls": len(latencies), "calls_per_s": round(len(latencies) / sum(latencies), 1),
            "p50_ms": round(pick(0.5), 3), "p99_ms": round(pick(0.99), 3),
            "mean_ms": round(statistics.fmean(latencies) * 1000, 3)}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(names, [results[n]["p50_ms"] for n in names], label="p50")
    ax.scatter(names, [results[n]["p99_ms"] for n in names], color="black", zorder=3, label="p99")
    ax.set_ylabel("latency per call (ms)")
    ax.set_title("One unary call, one client thread, 127.0.0.1")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 s per path instead of 15 s")
    parser.add_argument("--data", type=Path, help="unused by this benchmark (no images involved)")
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0
    seconds = 3.0 if args.quick else 15.0
    token = secrets.token_urlsafe(24)
    bare_port, umbra_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, UMBRA_HOME=home, UMBRA_SERVICE_TOKEN=token, UMBRA_TRAINING_PORT=str(umbra_port))
        procs = [start([sys.executable, "-m", "benchmarks.runtime", "--serve-bare", str(bare_port)], bare_port, env),
                 start([sys.executable, "-m", "umbra.cli.main", "serve", "training"], umbra_port, env)]
        try:
            bare = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{bare_port}"))
            umbra_health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{umbra_port}"))
            ops = operations_pb2_grpc.OperationsStub(open_channel(f"127.0.0.1:{umbra_port}", token, tenant="bench"))
            check, listing = health_pb2.HealthCheckRequest(), lro.ListOperationsRequest(page_size=10)
            results = {
                "bare": measure(lambda: bare.Check(check, timeout=5), seconds),
                "runtime_health": measure(lambda: umbra_health.Check(check, timeout=5), seconds),
                "runtime_authenticated": measure(lambda: ops.ListOperations(listing, timeout=5), seconds),
            }
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
    report = {
        "seconds_per_path": seconds,
        "paths": results,
        "runtime_health_vs_bare_ratio": round(
            results["runtime_health"]["calls_per_s"] / results["bare"]["calls_per_s"], 3),
        "authenticated_vs_bare_ratio": round(
            results["runtime_authenticated"]["calls_per_s"] / results["bare"]["calls_per_s"], 3),
    }
    write_result("runtime", report)
    plot(results, OUT / "runtime.png")
    print(json.dumps(report, indent=2))
    print(f"wrote {OUT / 'runtime.json'} and {OUT / 'runtime.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
