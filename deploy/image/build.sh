#!/usr/bin/env bash
# Builds deploy/Dockerfile with Debian's buildah, without a Docker engine and
# without a registry of base images: the base comes from deploy/image/base.sh
# (Debian's packages). Run as root (buildah --isolation chroot, vfs store).
#
#   deploy/image/build.sh           build unless an image of the same inputs is
#                                   in the store; print its name (last line)
#   deploy/image/build.sh --force   build again
#
# Two steps, each skipped when its inputs are unchanged:
#   1. the Dockerfile's "deps" stage (the Python dependencies, from the project
#      files alone: Dockerfile, constraints.txt, pyproject.toml,
#      clients/pyproject.toml, the base, the torch wheel) as
#      localhost/umbra-deps:<hash>;
#   2. the image, on that (--build-arg DEPS=...), from clients/ and services/
#      as git sees them (tracked and untracked, not ignored: no .venv, caches,
#      .umbra data or secrets), as localhost/umbra:src-<hash>, also tagged
#      localhost/umbra:latest.
# Older umbra-deps and src-* images are removed after a build.
# Run a command in it:
#   deploy/image/buildah.sh from --name umbra localhost/umbra:latest
#   deploy/image/buildah.sh run --net host -e UMBRA_SERVICE_TOKEN=... \
#       -e UMBRA_ADMIN_KEY=... umbra -- umbra serve coordinator
#
# Environment:
#   UMBRA_IMAGE_NAME    image repository        (default localhost/umbra)
#   UMBRA_IMAGE_BASE    base image to build on  (default: the one base.sh makes)
#   UMBRA_IMAGE_WHEELS  folder holding the torch wheel that constraints.txt pins,
#                       mounted for pip at build time (default: found in
#                       $PIP_FIND_LINKS, pip's find-links, /opt/wheels); "" for
#                       none: pip then takes it from the PyTorch CPU index
#   UMBRA_IMAGE_CA      CA bundle for pip at build time, mounted, not kept
#                       (default /etc/ssl/certs/ca-certificates.crt; "" none)
#   UMBRA_IMAGE_DRIVER, UMBRA_IMAGE_STORAGE, UMBRA_IMAGE_RUNROOT   the store
#                       (deploy/image/lib.sh)
#
# Needs: root, Debian's buildah (and mmdebstrap for the base), installed with
# apt-get when missing; PyPI for the Python packages.
set -euo pipefail

SAY_AS=build
# shellcheck source=deploy/image/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { header_of "${BASH_SOURCE[0]}"; }

NAME=${UMBRA_IMAGE_NAME:-localhost/umbra}
DEPS_NAME=$NAME-deps
DOCKERFILE=$REPO/deploy/Dockerfile
CONTEXT=$WORK/context
# Mount points inside the build (bind mounts: nothing of them stays in the image).
# Folders, not files: a file's mount point would stay in the image as an empty file.
WHEELS_AT=/run/umbra-build/wheels
CA_AT=/run/umbra-build/ca

# The folder that holds the torch wheel constraints.txt pins (e.g. torch==2.13.0+cpu), or "".
find_wheels() {
    local pin dir dirs=()
    if [ -n "${UMBRA_IMAGE_WHEELS+set}" ]; then
        printf '%s' "$UMBRA_IMAGE_WHEELS"; return 0
    fi
    pin=$(sed -n 's/^torch==\([^ #]*\).*/\1/p' "$REPO/constraints.txt" | head -n1)
    [ -n "$pin" ] || return 0
    read -r -a dirs <<<"${PIP_FIND_LINKS:-} $(pip config get global.find-links 2>/dev/null || true) /opt/wheels"
    for dir in "${dirs[@]}"; do
        dir=${dir#file://}
        [ -d "$dir" ] || continue
        if compgen -G "$dir/torch-$pin-cp311-*.whl" >/dev/null; then
            (cd "$dir" && pwd -P); return 0
        fi
    done
}

# Copies the build's inputs into $CONTEXT: what git sees (tracked + untracked, not ignored), nothing else.
stage_context() {
    local list=$WORK/context.list
    rm -rf "$CONTEXT"
    mkdir -p "$CONTEXT"
    if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
        git -C "$REPO" ls-files -z --cached --others --exclude-standard -- \
            constraints.txt pyproject.toml clients services \
            | while IFS= read -r -d '' f; do [ -f "$REPO/$f" ] && printf '%s\0' "$f"; done >"$list"
    else
        (cd "$REPO" && find constraints.txt pyproject.toml clients services -type f \
            ! -path '*/__pycache__/*' ! -path '*.egg-info/*' ! -path '*/build/*' -print0) >"$list"
    fi
    (cd "$REPO" && tar --null -T "$list" -cf -) | tar -xf - -C "$CONTEXT"
}

# hash_of <text> <file>...: 16 hex digits over the text and the files' paths and contents (files under $CONTEXT).
hash_of() {
    local text=$1; shift
    { printf '%s\n' "$text"; (cd "$CONTEXT" && find "$@" -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum); } \
        | sha256sum | cut -c1-16
}

image_id() { bh inspect --type image --format '{{.FromImageID}}' "$1"; }

# remove_others <repository> <keep>: removes the repository's other tags (their layers go with the last name).
remove_others() {
    local repo=$1 keep=$2 ref
    while read -r ref; do
        [ "$ref" = "$keep" ] || [ "$ref" = "$repo:latest" ] || bh rmi "$ref" >/dev/null 2>&1 || true
    done < <(bh images --format '{{.Name}}:{{.Tag}}' 2>/dev/null | awk -v p="$repo:" 'index($0, p) == 1' || true)
}

# Working containers a failed build left (builds here are one at a time: the lock).
remove_leftovers() {
    local ctr
    while read -r ctr; do
        case "$ctr" in *-working-container*) bh rm "$ctr" >/dev/null 2>&1 || true ;; esac
    done < <(bh containers --format '{{.ContainerName}}' 2>/dev/null || true)
}

bud() {
    local log=$1; shift
    bh bud --isolation chroot --pull=false -f "$DOCKERFILE" "${args[@]}" "$@" "$CONTEXT" >"$log" 2>&1 \
        || { tail -n 40 "$log" >&2; remove_leftovers; die "buildah bud failed (log: $log)"; }
}

case "${1:-}" in
    ""|--force) ;;
    -h|--help|help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
esac

need_root
need_packages buildah=buildah
mkdir -p "$WORK"
exec 9>"$WORK/.build.lock"
flock 9
t0=$(now)
remove_leftovers

if [ -n "${UMBRA_IMAGE_BASE:-}" ]; then
    BASE=$UMBRA_IMAGE_BASE
else
    BASE=$("$IMAGE_LIB_DIR/base.sh" | tail -n1)
fi
WHEELS=$(find_wheels)
CA=${UMBRA_IMAGE_CA-/etc/ssl/certs/ca-certificates.crt}
[ -z "$CA" ] || [ -f "$CA" ] || CA=""

args=(--build-arg "BASE=$BASE")
if [ -n "$WHEELS" ]; then
    args+=(--volume "$WHEELS:$WHEELS_AT:ro" --build-arg "PIP_FIND_LINKS=$WHEELS_AT" --build-arg "TORCH_INDEX=")
    torch_from=$(cd "$WHEELS" && find . -maxdepth 1 -name 'torch-*.whl' -printf '%f ')
else
    torch_from="the PyTorch CPU index"
fi
[ -z "$CA" ] || args+=(--volume "$(cd "$(dirname "$CA")" && pwd -P):$CA_AT:ro" --build-arg "PIP_CERT=$CA_AT/${CA##*/}")

stage_context
cp "$DOCKERFILE" "$CONTEXT/.Dockerfile"   # hashed with the rest (not copied into the image)

# 1. the dependencies
DEPS_HASH=$(hash_of "base=$(image_id "$BASE") torch=$torch_from args=${args[*]}" \
    .Dockerfile constraints.txt pyproject.toml clients/pyproject.toml)
DEPS=$DEPS_NAME:$DEPS_HASH
if [ "${1:-}" = --force ] || ! image_exists "$DEPS"; then
    say "installing the dependencies ($DEPS, torch from $torch_from)..."
    tb=$(now)
    bud "$WORK/build-deps.log" --target deps -t "$DEPS"
    say "dependencies installed in $(elapsed "$tb") s"
fi

# 2. the image
HASH=$(hash_of "deps=$(image_id "$DEPS")" .Dockerfile constraints.txt pyproject.toml clients services)
REF=$NAME:src-$HASH
if [ "${1:-}" != --force ] && image_exists "$REF"; then
    say "$REF is already built (same inputs)"
else
    say "building $REF on $DEPS..."
    tb=$(now)
    bud "$WORK/build.log" --build-arg "DEPS=$DEPS" -t "$REF" -t "$NAME:latest"
    say "built in $(elapsed "$tb") s"
fi
bh tag "$REF" "$NAME:latest"
remove_others "$NAME" "$REF"
remove_others "$DEPS_NAME" "$DEPS"
bh rmi --prune >/dev/null 2>&1 || true
say "$REF: $(bh images --format '{{.Size}}' "$REF" | head -n1) ($(elapsed "$t0") s in all)"
printf '%s\n' "$REF"
