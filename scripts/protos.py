"""Generate, check, lint and compare Umbra's protobuf contracts.

    python scripts/protos.py generate            # proto/ -> clients/umbra/<area>/v1/*_pb2*.py(i)
    python scripts/protos.py check               # fail when committed code differs from proto/
    python scripts/protos.py lint --buf BUF      # buf lint (STANDARD, see buf.yaml)
    python scripts/protos.py breaking --buf BUF --against-branch main

The generator is grpcio-tools, pinned in constraints.txt together with the protobuf runtime. Imports of
google/api, google/rpc and google/longrunning resolve to the .proto files shipped inside the installed
googleapis-common-protos package (the Buf Schema Registry is not reachable from our machines), so buf is
given compiled images (protoc --descriptor_set_out) rather than asked to resolve imports itself.
"""

from __future__ import annotations

import argparse
import filecmp
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import google.api  # googleapis-common-protos: its .proto files sit beside its modules
import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "clients"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
GOOGLEAPIS_ROOT = Path(next(iter(google.api.__path__))).parent.parent
WELL_KNOWN_ROOT = Path(grpc_tools.__file__).parent / "_proto"
# googleapis-common-protos ships google/longrunning/operations.proto under the name operations_proto.proto,
# while its Python module registers the canonical name; we compile against a copy with the canonical name.
DEPS_DIR = ROOT / ".build" / "proto-deps"


def prepare_deps() -> Path:
    target = DEPS_DIR / "google" / "longrunning" / "operations.proto"
    source = GOOGLEAPIS_ROOT / "google" / "longrunning" / "operations_proto.proto"
    if not target.exists() or target.read_bytes() != source.read_bytes():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(source.read_bytes())
        tmp.replace(target)
    return DEPS_DIR


def proto_files(proto_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(proto_dir)) for p in proto_dir.rglob("*.proto"))


def run_protoc(proto_dir: Path, extra_args: list[str]) -> None:
    args = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{prepare_deps()}",
        f"-I{GOOGLEAPIS_ROOT}",
        f"-I{WELL_KNOWN_ROOT}",
        *extra_args,
        *proto_files(proto_dir),
    ]
    if protoc.main(args) != 0:
        sys.exit(f"protoc failed on {proto_dir}")


def generate(out_dir: Path) -> None:
    run_protoc(PROTO_DIR, [f"--python_out={out_dir}", f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}"])


def generated_files(root: Path) -> set[str]:
    umbra = root / "umbra"
    return {
        str(p.relative_to(root))
        for p in umbra.rglob("*")
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    }


def check() -> int:
    """Regenerates into a temporary folder and compares it with the committed files."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh_root = Path(tmp)
        generate(fresh_root)
        fresh, committed = generated_files(fresh_root), generated_files(OUT_DIR)
        problems = [f"missing (run `make protos`): clients/{f}" for f in sorted(fresh - committed)]
        problems += [f"stale, no .proto makes it: clients/{f}" for f in sorted(committed - fresh)]
        problems += [
            f"differs from its .proto (run `make protos`): clients/{f}"
            for f in sorted(fresh & committed)
            if not filecmp.cmp(fresh_root / f, OUT_DIR / f, shallow=False)
        ]
    for line in problems:
        print(line, file=sys.stderr)
    if not problems:
        print(f"generated code matches proto/ ({len(fresh)} files)")
    return 1 if problems else 0


def build_image(proto_dir: Path, image: Path) -> Path:
    """Compiles proto_dir with its imports into a buf-readable image (a FileDescriptorSet)."""
    image.parent.mkdir(parents=True, exist_ok=True)
    run_protoc(proto_dir, ["--include_imports", "--include_source_info", f"--descriptor_set_out={image}"])
    return image


def lint(buf: str) -> int:
    image = build_image(PROTO_DIR, ROOT / ".build" / "current.binpb")
    cmd = [buf, "lint", str(image), "--config", str(ROOT / "buf.yaml"), "--path", "umbra"]
    result = subprocess.run(cmd, cwd=ROOT)
    if result.returncode == 0:
        print(f"buf lint: clean ({len(proto_files(PROTO_DIR))} files)")
    return result.returncode


def breaking(buf: str, against_branch: str) -> int:
    """Compares proto/ with proto/ on a git branch; a branch without proto/ yet has nothing to break."""
    listing = subprocess.run(
        ["git", "ls-tree", "-d", "--name-only", against_branch, "proto"], cwd=ROOT, capture_output=True, text=True
    )
    if listing.returncode != 0 or not listing.stdout.strip():
        print(f"buf breaking: {against_branch} has no proto/ yet; nothing to compare")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "against.tar"
        subprocess.run(["git", "archive", "-o", str(archive), against_branch, "proto"], cwd=ROOT, check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        against = build_image(Path(tmp) / "proto", Path(tmp) / "against.binpb")
        current = build_image(PROTO_DIR, Path(tmp) / "current.binpb")
        cmd = [buf, "breaking", str(current), "--against", str(against), "--config", str(ROOT / "buf.yaml"),
               "--path", "umbra"]
        result = subprocess.run(cmd, cwd=ROOT)
    if result.returncode == 0:
        print(f"buf breaking: no breaking change against {against_branch}")
    return result.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("generate", help="regenerate the committed Python code")
    sub.add_parser("check", help="fail when the committed code differs from proto/")
    lint_p = sub.add_parser("lint", help="buf lint")
    lint_p.add_argument("--buf", default="buf")
    breaking_p = sub.add_parser("breaking", help="buf breaking against a git branch")
    breaking_p.add_argument("--buf", default="buf")
    breaking_p.add_argument("--against-branch", default="main")
    args = parser.parse_args()
    if args.command == "generate":
        for stale in generated_files(OUT_DIR):
            (OUT_DIR / stale).unlink()
        generate(OUT_DIR)
        print(f"generated {len(generated_files(OUT_DIR))} files under clients/umbra/")
        return 0
    if args.command == "check":
        return check()
    if args.command == "lint":
        return lint(args.buf)
    return breaking(args.buf, args.against_branch)


if __name__ == "__main__":
    sys.exit(main())
