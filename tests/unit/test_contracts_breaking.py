"""`make breaking` can fail: a copy of proto/ with a released field deleted, or renumbered, is refused by the same
check (`scripts/protos.py breaking`, buf breaking against the newest image in proto/releases/)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "node_modules" / ".bin" / "buf"
RELEASES = ROOT / "proto" / "releases"

pytestmark = pytest.mark.skipif(not BUF.exists(), reason="no buf binary: `make tools` (in `make test`) installs it")


def newest_release() -> Path:
    images = sorted(RELEASES.glob("*.binpb"), key=lambda p: tuple(int(x) for x in p.stem.lstrip("v").split(".")))
    assert images, f"no release image in {RELEASES}"
    return images[-1]


def a_released_field(proto_dir: Path) -> tuple[Path, str, str, int, re.Match]:
    """A field of the release (not in a oneof) whose declaration appears exactly once in its file under proto_dir:
    (file, message, field, number, the declaration's match)."""
    released = descriptor_pb2.FileDescriptorSet.FromString(newest_release().read_bytes())
    for file in released.file:
        path = proto_dir / file.name
        if not file.name.startswith("umbra/") or not path.exists():
            continue
        text = path.read_text()
        for message in file.message_type:
            for field in message.field:
                if field.HasField("oneof_index"):
                    continue
                found = list(re.finditer(rf"^[ \t]*[\w.<>, ]+\s{field.name}\s*=\s*{field.number}\s*[;\[].*\n",
                                         text, re.M))
                if len(found) == 1:
                    return path, message.name, field.name, field.number, found[0]
    pytest.fail("no released field found in proto/ to break")


def breaking(proto_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "protos.py"), "breaking", "--buf", str(BUF),
                           "--proto-dir", str(proto_dir)], capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("change", ["delete", "renumber"])
def test_breaking_a_released_field_fails_the_check(tmp_path, change):
    proto = tmp_path / "proto"
    shutil.copytree(ROOT / "proto", proto, ignore=shutil.ignore_patterns("releases"))
    path, message, field, number, declared = a_released_field(proto)
    text = path.read_text()
    line = declared.group(0)
    changed = "\n" if change == "delete" else re.sub(rf"=\s*{number}\b", f"= {number + 500}", line, count=1)
    path.write_text(text[:declared.start()] + changed + text[declared.end():])

    result = breaking(proto)

    said = result.stdout + result.stderr
    assert result.returncode != 0, f"deleting/renumbering {message}.{field} passed buf breaking:\n{said}"
    assert f'Previously present field "{number}" with name "{field}" on message "{message}"' in said, said
    assert f"breaks the released contracts {newest_release().stem}" in said
