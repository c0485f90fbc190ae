"""Generate, check, lint and compare Umbra's protobuf contracts.

    python scripts/protos.py generate            # proto/ -> clients/umbra/<area>/v1/*_pb2*.py(i)
    python scripts/protos.py check               # fail when committed code differs from proto/
    python scripts/protos.py lint --buf BUF      # buf lint (STANDARD, see buf.yaml)
    python scripts/protos.py breaking --buf BUF  # buf breaking against the last release (proto/releases/)
    python scripts/protos.py release v0.2.0      # the contracts at HEAD -> proto/releases/v0.2.0.binpb

Releases: each released version of the contracts is kept as a buf image (a FileDescriptorSet with its imports and
source info) in proto/releases/<version>.binpb, built from the git tree of the release (tagged <version>), and
`breaking` compares proto/ with the newest of them, so a change that breaks a released contract fails `make test`.
To release: tag the commit, `python scripts/protos.py release <version> --ref <version>`, and commit the image.

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
RELEASES_DIR = PROTO_DIR / "releases"
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


def releases() -> list[Path]:
    """The released contracts' images, oldest first (by version number: v0.10.0 after v0.9.0)."""
    def version(path: Path) -> tuple:
        return tuple(int(part) if part.isdigit() else part for part in path.stem.lstrip("v").split("."))

    return sorted(RELEASES_DIR.glob("*.binpb"), key=version)


def release(version: str, ref: str) -> int:
    """Builds the image of proto/ as committed at `ref` into proto/releases/<version>.binpb."""
    target = RELEASES_DIR / f"{version}.binpb"
    if target.exists():
        print(f"{target.relative_to(ROOT)} exists: a release is never rebuilt", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "release.tar"
        subprocess.run(["git", "archive", "-o", str(archive), ref, "proto"], cwd=ROOT, check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        build_image(Path(tmp) / "proto", target)
    print(f"wrote {target.relative_to(ROOT)} from proto/ at {ref}: commit it")
    return 0


def breaking(buf: str, against: Path | None, proto_dir: Path = PROTO_DIR) -> int:
    """Compares proto_dir with a released image (default: the newest in proto/releases/)."""
    if against is None:
        known = releases()
        if not known:
            print(f"buf breaking: no release image in {RELEASES_DIR.relative_to(ROOT)}/", file=sys.stderr)
            return 1
        against = known[-1]
    with tempfile.TemporaryDirectory() as tmp:
        current = build_image(proto_dir, Path(tmp) / "current.binpb")
        cmd = [buf, "breaking", str(current), "--against", str(against), "--config", str(ROOT / "buf.yaml"),
               "--path", "umbra"]
        result = subprocess.run(cmd, cwd=ROOT)
    if result.returncode == 0:
        print(f"buf breaking: no breaking change against {against.stem} ({against.name})")
    else:
        where = proto_dir.relative_to(ROOT) if proto_dir.is_relative_to(ROOT) else proto_dir
        print(f"buf breaking: {where}/ breaks the released contracts {against.stem}: keep released fields and their "
              f"numbers (reserve what is removed), or make a new package version", file=sys.stderr)
    return result.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("generate", help="regenerate the committed Python code")
    sub.add_parser("check", help="fail when the committed code differs from proto/")
    lint_p = sub.add_parser("lint", help="buf lint")
    lint_p.add_argument("--buf", default="buf")
    breaking_p = sub.add_parser("breaking", help="buf breaking against the last released contracts")
    breaking_p.add_argument("--buf", default="buf")
    breaking_p.add_argument("--against", type=Path, help="a release image (default: the newest in proto/releases/)")
    breaking_p.add_argument("--proto-dir", type=Path, default=PROTO_DIR, help="the contracts to check (default proto/)")
    release_p = sub.add_parser("release", help="write the image of the contracts at a git ref into proto/releases/")
    release_p.add_argument("version", help="e.g. v0.2.0")
    release_p.add_argument("--ref", default="HEAD", help="the git ref (tag) of the release (default HEAD)")
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
    if args.command == "release":
        return release(args.version, args.ref)
    return breaking(args.buf, args.against, args.proto_dir.resolve())


if __name__ == "__main__":
    sys.exit(main())
