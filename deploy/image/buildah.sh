#!/usr/bin/env bash
# buildah on the project's image store (the one deploy/image/build.sh builds
# into: vfs, chroot isolation; see deploy/image/lib.sh). Runs as root.
#
#   deploy/image/buildah.sh images
#   deploy/image/buildah.sh from --name umbra localhost/umbra:latest
#   deploy/image/buildah.sh run --net host -e UMBRA_SERVICE_TOKEN=... \
#       -e UMBRA_ADMIN_KEY=... umbra -- umbra serve coordinator
#   deploy/image/buildah.sh rm umbra
#
# (`podman run` does not work on the development machines; `buildah run`
# does, with --isolation chroot, which this sets.)
set -euo pipefail

SAY_AS=buildah
# shellcheck source=deploy/image/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_root
need_packages buildah=buildah
bh "$@"
