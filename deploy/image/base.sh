#!/usr/bin/env bash
# The base image for deploy/Dockerfile where no registry of base images can be
# reached: Debian 12 (bookworm) with python3, python3-venv, ca-certificates and
# libstdc++6 (which the C++ extensions of the wheels need, as on python:3.11-slim),
# made from Debian's packages with mmdebstrap, then put into an image with
# buildah (from scratch + add the root file system). Nothing else in it: no apt,
# no documentation but the copyright files, no man pages, no locales.
#
#   deploy/image/base.sh           make the base unless it is already in the
#                                  store; print its name (last line of stdout)
#   deploy/image/base.sh --force   make it again (e.g. for Debian's updates)
#
# The name is localhost/umbra-base:bookworm-<hash of this script>, so editing
# the package list makes a new base (and removes the older one). Images live in
# the project's own buildah store (deploy/image/lib.sh; see them with
# deploy/image/buildah.sh images).
#
# Environment:
#   UMBRA_BASE_MIRROR   Debian mirror    (default http://deb.debian.org/debian)
#   UMBRA_BASE_SECURITY security mirror  (default http://deb.debian.org/debian-security)
#
# Needs: root, Debian's buildah and mmdebstrap (installed with apt-get when missing).
set -euo pipefail

SAY_AS=base
# shellcheck source=deploy/image/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SUITE=bookworm
# libpango and a font: WeasyPrint prints the protection report's PDF in the coordinator.
PACKAGES=python3,python3-venv,ca-certificates,passwd,libstdc++6,libpango-1.0-0,libpangoft2-1.0-0,fonts-dejavu-core
MIRROR=${UMBRA_BASE_MIRROR:-http://deb.debian.org/debian}
SECURITY=${UMBRA_BASE_SECURITY:-http://deb.debian.org/debian-security}

SCRIPT_HASH=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)
NAME=localhost/umbra-base:$SUITE-$SCRIPT_HASH

make_base() {
    local t0 tar ctr
    t0=$(now)
    mkdir -p "$WORK"
    tar=$WORK/base-$SUITE.tar
    rm -f "$tar"
    say "making a Debian $SUITE root file system ($PACKAGES) with mmdebstrap..."
    # essential: only the Essential:yes packages, plus what --include names (and their dependencies).
    mmdebstrap --quiet --mode=root --variant=essential --include="$PACKAGES" \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        "$SUITE" "$tar" \
        "deb $MIRROR $SUITE main" \
        "deb $MIRROR $SUITE-updates main" \
        "deb $SECURITY $SUITE-security main" \
        >"$WORK/mmdebstrap.log" 2>&1 \
        || { tail -n 30 "$WORK/mmdebstrap.log" >&2; die "mmdebstrap failed (log: $WORK/mmdebstrap.log)"; }
    say "root file system: $(du -h "$tar" | cut -f1) (tar) in $(elapsed "$t0") s; importing it..."
    ctr=$(bh from --quiet scratch)
    # shellcheck disable=SC2064
    trap "bh rm '$ctr' >/dev/null 2>&1 || true" EXIT
    bh add --quiet "$ctr" "$tar" / >/dev/null
    bh config \
        --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 \
        --cmd python3 \
        --label "org.opencontainers.image.description=Debian $SUITE with $PACKAGES (deploy/image/base.sh)" \
        --label "org.umbra.base.script=$SCRIPT_HASH" \
        "$ctr"
    bh commit --quiet --rm "$ctr" "$NAME" >/dev/null
    trap - EXIT
    rm -f "$tar"
    # older bases (of an earlier version of this script): images built on them keep their layers
    local ref
    while read -r ref; do
        [ "$ref" = "$NAME" ] || bh rmi "$ref" >/dev/null 2>&1 || true
    done < <(bh images --format '{{.Name}}:{{.Tag}}' 2>/dev/null | awk -v p="${NAME%%:*}:" 'index($0, p) == 1' || true)
    say "made $NAME in $(elapsed "$t0") s"
}

case "${1:-}" in
    ""|--force) ;;
    -h|--help|help) header_of "${BASH_SOURCE[0]}"; exit 0 ;;
    *) header_of "${BASH_SOURCE[0]}" >&2; exit 2 ;;
esac

need_root
need_packages buildah=buildah mmdebstrap=mmdebstrap
mkdir -p "$WORK"
exec 8>"$WORK/.base.lock"
flock 8
if [ "${1:-}" = --force ] || ! image_exists "$NAME"; then
    make_base
else
    say "$NAME is already in the store"
fi
printf '%s\n' "$NAME"
