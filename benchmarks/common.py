"""What the benchmarks share: the default data, the S3 server, and writing results."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out" / "bench"
FACE_SAMPLE = ROOT.parent / "shared" / "data" / "utkface64-dev"
RGW = ROOT / "deploy" / "s3" / "rgw.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_data(data: Path | None, scratch: Path, count: int = 3000, size: int = 64) -> tuple[Path, str]:
    """The folder to use and what it is: --data, else the face sample when present, else synthetic faces."""
    if data is not None:
        if not (data / "images").is_dir():
            raise SystemExit(f"--data {data}: expected images/ and labels.csv inside")
        return data, str(data)
    if (FACE_SAMPLE / "images").is_dir():
        return FACE_SAMPLE, "utkface64-dev (3,000 real faces)"
    from umbra.dataset import synthetic

    return synthetic.write_folder(scratch / "synthetic", count, size=size, seed=0), f"{count} synthetic faces"


@contextmanager
def s3_server() -> Iterator[dict[str, str]]:
    """The project's local S3 server (deploy/s3/rgw.sh), started if needed and stopped again if we started it."""
    running = subprocess.run(["bash", str(RGW), "status"], capture_output=True).returncode == 0
    if not running:
        subprocess.run(["bash", str(RGW), "start"], check=True)
    try:
        lines = subprocess.run(["bash", str(RGW), "env"], capture_output=True, text=True, check=True).stdout
        yield dict(line.split("=", 1) for line in lines.splitlines() if "=" in line)
    finally:
        if not running:
            subprocess.run(["bash", str(RGW), "stop"], check=False)


def write_result(name: str, result: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    return path
