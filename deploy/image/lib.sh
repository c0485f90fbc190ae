# shellcheck shell=bash
# Shared by deploy/image/*.sh (sourced, not run): paths, messages, and buildah
# with the project's own image storage.
#
# Environment:
#   UMBRA_IMAGE_DRIVER    buildah's storage driver     (default vfs: works everywhere, copies
#                         the whole file system for each container and layer; overlay is
#                         faster where the kernel allows it)
#   UMBRA_IMAGE_STORAGE   buildah's image store        (default <repo>/.build/image/<driver>)
#   UMBRA_IMAGE_RUNROOT   buildah's run state          (default <repo>/.build/image/run-<driver>)

IMAGE_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd "$IMAGE_LIB_DIR/../.." && pwd -P)

abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

WORK=$REPO/.build/image
DRIVER=${UMBRA_IMAGE_DRIVER:-vfs}
STORAGE=$(abspath "${UMBRA_IMAGE_STORAGE:-$WORK/$DRIVER}")
RUNROOT=$(abspath "${UMBRA_IMAGE_RUNROOT:-$WORK/run-$DRIVER}")

say() { printf '%s: %s\n' "${SAY_AS:-image}" "$*" >&2; }
die() { printf '%s: ERROR: %s\n' "${SAY_AS:-image}" "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# buildah on the project's store, with chroot isolation (no OCI runtime needed).
bh() {
    BUILDAH_ISOLATION=chroot buildah --root "$STORAGE" --runroot "$RUNROOT" --storage-driver "$DRIVER" "$@"
}

# The comment block at the top of a script (its usage), without the #! line.
header_of() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$1"; }

image_exists() { bh inspect --type image "$1" >/dev/null 2>&1; }

# need_packages <command>=<debian package>...: installs the missing ones from Debian's packages.
need_packages() {
    local pair missing=()
    for pair in "$@"; do
        command -v "${pair%%=*}" >/dev/null || missing+=("${pair#*=}")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    [ "$(id -u)" = 0 ] || die "needs ${missing[*]} (Debian packages), and root to install them"
    command -v apt-get >/dev/null || die "needs ${missing[*]}, and apt-get (Debian) to install them"
    mkdir -p "$WORK"
    say "installing ${missing[*]} from Debian's packages..."
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
            >"$WORK/apt-install.log" 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get -q update >>"$WORK/apt-install.log" 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
            >>"$WORK/apt-install.log" 2>&1 \
            || { tail -n 20 "$WORK/apt-install.log" >&2; die "apt-get install ${missing[*]} failed"; }
    fi
}

need_root() {
    [ "$(id -u)" = 0 ] || die "buildah with --isolation chroot and the vfs store needs root here"
}
