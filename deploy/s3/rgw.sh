#!/usr/bin/env bash
# Real S3 server for tests: Ceph RADOS Gateway (Debian 12 packages, Ceph 16.2)
# run from an unpacked package tree, without a system install, without Docker,
# without systemd. One monitor, one OSD (bluestore on a sparse file) and
# radosgw, all bound to 127.0.0.1.
#
#   deploy/s3/rgw.sh install   download + unpack the .debs into $UMBRA_S3_CACHE
#   deploy/s3/rgw.sh start     install if needed, start mon + osd + radosgw,
#                              create the S3 user once, wait for the endpoint
#   deploy/s3/rgw.sh stop      stop the three daemons (TERM, then KILL)
#   deploy/s3/rgw.sh status    say whether the endpoint answers (exit 0 if up)
#   deploy/s3/rgw.sh env       print the credentials.env lines
#
# Environment:
#   UMBRA_S3_CACHE          unpacked packages      (default <repo>/.build/rgw)
#   UMBRA_S3_DATA           cluster data + logs    (default <repo>/.build/rgw-data)
#   UMBRA_S3_PORT           S3 port on 127.0.0.1   (default 7480)
#   UMBRA_S3_MON_PORT       monitor port (msgr v2), fixed when the data dir is
#                           created                (default 3300)
#   UMBRA_S3_START_TIMEOUT  seconds to wait for the endpoint (default 180)
#   UMBRA_S3_STOP_TIMEOUT   seconds before SIGKILL            (default 20)
#
# Needs: apt-get/dpkg (Debian 12), python3 (Debian's, for the one-time OSD
# registration through python3-rados), util-linux (setsid, flock). Root is
# only needed if the apt package lists are empty (apt-get update); without
# root a private package list under the cache dir is used instead.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd -P)

abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

CACHE=$(abspath "${UMBRA_S3_CACHE:-$REPO/.build/rgw}")
DATA=$(abspath "${UMBRA_S3_DATA:-$REPO/.build/rgw-data}")
PORT=${UMBRA_S3_PORT:-7480}
START_TIMEOUT=${UMBRA_S3_START_TIMEOUT:-180}
STOP_TIMEOUT=${UMBRA_S3_STOP_TIMEOUT:-20}

ROOT=$CACHE/root                 # the unpacked package tree
MARKER=$CACHE/installed.txt      # package=version list, written last
CONF=$DATA/ceph.conf
RUN=$DATA/run
LOG=$DATA/log
CREDS=$DATA/credentials.env
KEYS=$DATA/s3-user.env           # the S3 user's keys, written once
S3_USER=umbra

# Top-level packages; their dependencies are resolved by apt.
TOP_PKGS=(radosgw ceph-mon ceph-osd ceph-common ceph-base)
# Binaries that must load (checked with ldd).
CHECK_BINS=(ceph-mon ceph-osd radosgw radosgw-admin monmaptool)

DAEMONS_ORDER=(mon osd rgw)

say() { printf 'rgw: %s\n' "$*"; }
die() { printf 'rgw: ERROR: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------- install ---

APT_OPTS=()
if [ "$(id -u)" = 0 ]; then APT_OPTS+=(-o APT::Sandbox::User=root); fi
PRIVATE_LISTS=$CACHE/apt/lists

use_private_lists() {
    mkdir -p "$PRIVATE_LISTS/partial" "$CACHE/apt/cache/archives/partial"
    APT_OPTS+=(-o "Dir::State::Lists=$PRIVATE_LISTS" -o "Dir::Cache=$CACHE/apt/cache"
               -o Debug::NoLocking=1)
}

apt_update() {
    say "refreshing apt package lists..."
    if [ "$(id -u)" = 0 ]; then
        apt-get "${APT_OPTS[@]}" -qq update >"$CACHE/apt-update.log" 2>&1 \
            || { tail -n 20 "$CACHE/apt-update.log" >&2; die "apt-get update failed"; }
    else
        case " ${APT_OPTS[*]} " in *Dir::State::Lists*) ;; *) use_private_lists ;; esac
        apt-get "${APT_OPTS[@]}" -qq update >"$CACHE/apt-update.log" 2>&1 \
            || { tail -n 20 "$CACHE/apt-update.log" >&2; die "apt-get update (private lists) failed"; }
    fi
}

# Sets PKGS. Resolves with the current package lists; fetches lists only
# when apt does not know the packages (a fresh machine with empty
# /var/lib/apt/lists). Not run in a subshell: it may switch APT_OPTS.
resolve_with_lists() {
    PKGS=$(resolve_packages 2>/dev/null) || PKGS=""
    [ -z "$PKGS" ] || return 0
    if [ "$(id -u)" != 0 ] && [ -d "$PRIVATE_LISTS" ]; then
        use_private_lists
        PKGS=$(resolve_packages 2>/dev/null) || PKGS=""
        [ -z "$PKGS" ] || return 0
    fi
    apt_update
    PKGS=$(resolve_packages) || die "apt cannot resolve ${TOP_PKGS[*]} even after apt-get update (is this Debian 12?)"
}

# Print "name=version" for every package a system install would add or
# upgrade (all recursive dependencies that this machine lacks), plus the
# top-level packages themselves even if the system happens to have them.
resolve_packages() {
    local sim
    sim=$(apt-get "${APT_OPTS[@]}" -o Debug::NoLocking=1 install -s -y --no-install-recommends "${TOP_PKGS[@]}" 2>&1) \
        || { printf '%s\n' "$sim" | tail -n 20 >&2; return 1; }
    {
        printf '%s\n' "$sim" | sed -n 's/^Inst \([^ ]*\) \(\[[^]]*\] \)\{0,1\}(\([^ ]*\) .*/\1=\3/p'
        local p
        for p in "${TOP_PKGS[@]}"; do
            grep -q "^Inst $p " <<<"$sim" || printf '%s\n' "$p"
        done
    } | sort -u
}

lib_path() {
    local d out=""
    for d in "$ROOT"/usr/lib/*-linux-gnu "$ROOT"/usr/lib/*-linux-gnu/ceph "$ROOT"/lib/*-linux-gnu; do
        [ -d "$d" ] && out+="${out:+:}$d"
    done
    printf '%s' "$out${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

# Directory like $ROOT/usr/lib/x86_64-linux-gnu (holds ceph/, rados-classes/).
arch_libdir() {
    local d
    for d in "$ROOT"/usr/lib/*-linux-gnu; do
        [ -d "$d/ceph" ] && { printf '%s' "$d"; return 0; }
    done
    return 1
}

# Runs a binary from the unpacked tree with the right library path.
cephx() {
    local bin=$1; shift
    LD_LIBRARY_PATH=$(lib_path) "$ROOT/usr/bin/$bin" "$@"
}

missing_libs() {
    local b
    for b in "${CHECK_BINS[@]}"; do
        [ -x "$ROOT/usr/bin/$b" ] || { printf '%s(binary)\n' "$b"; continue; }
        LD_LIBRARY_PATH=$(lib_path) ldd "$ROOT/usr/bin/$b" 2>/dev/null \
            | awk '/not found/ { print $1 }'
    done | sort -u
}

installed_ok() {
    [ -f "$MARKER" ] && [ -d "$ROOT" ] || return 1
    local missing
    missing=$(missing_libs)
    if [ -n "$missing" ]; then
        say "cached install in $CACHE is incomplete on this machine (missing: ${missing//$'\n'/ }); reinstalling"
        return 1
    fi
    return 0
}

do_install() {
    mkdir -p "$CACHE"
    exec 8>"$CACHE/.lock"
    flock 8
    if installed_ok; then
        say "packages already installed in $CACHE ($(wc -l <"$MARKER") packages)"
        exec 8>&-
        return 0
    fi
    local t0 pkgs n dl=$CACHE/debs.tmp new=$CACHE/root.tmp
    t0=$(now)
    if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
        die "apt-get/dpkg not found: this script needs a Debian 12 machine"
    fi
    say "resolving packages (radosgw, ceph-mon, ceph-osd and their dependencies)..."
    resolve_with_lists
    pkgs=$PKGS
    n=$(printf '%s\n' "$pkgs" | grep -c .)
    rm -rf "$dl" "$new"
    mkdir -p "$dl" "$new"
    say "downloading $n packages..."
    # shellcheck disable=SC2086
    if ! (cd "$dl" && apt-get "${APT_OPTS[@]}" -q download $pkgs >"$CACHE/apt-download.log" 2>&1); then
        say "download failed; refreshing package lists and retrying"
        apt_update
        pkgs=$(resolve_packages) || die "could not resolve the package set"
        n=$(printf '%s\n' "$pkgs" | grep -c .)
        rm -rf "$dl"; mkdir -p "$dl"
        say "downloading $n packages..."
        # shellcheck disable=SC2086
        (cd "$dl" && apt-get "${APT_OPTS[@]}" -q download $pkgs >"$CACHE/apt-download.log" 2>&1) \
            || { tail -n 20 "$CACHE/apt-download.log" >&2; die "apt-get download failed"; }
    fi
    say "unpacking $(ls "$dl"/*.deb | wc -l) packages ($(du -sh "$dl" | cut -f1))..."
    # largest first, one dpkg -x per core (the big ceph packages dominate)
    ls -S "$dl"/*.deb | tr '\n' '\0' | xargs -0 -I{} -P "$(nproc 2>/dev/null || echo 2)" dpkg -x {} "$new" \
        || die "dpkg -x failed"
    rm -rf "$ROOT" "$MARKER"
    mv "$new" "$ROOT"
    rm -rf "$dl"
    local missing
    missing=$(missing_libs)
    [ -z "$missing" ] || die "unpacked binaries still miss libraries: ${missing//$'\n'/ }"
    printf '%s\n' "$pkgs" >"$MARKER"
    say "installed $n packages into $CACHE in $(elapsed "$t0") s ($(cephx ceph-mon --version 2>/dev/null | awk '{print $3}'))"
    exec 8>&-
}

# ---------------------------------------------------------------- daemons ---

pidfile() { printf '%s/%s.pid' "$RUN" "$1"; }

# A pid is ours if it is alive (not a zombie) and was started with our conf.
is_ours() {
    local pid=$1 st cmd
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [ "$st" != Z ] || return 1
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    case "$cmd" in *" -c $CONF "*) return 0 ;; esac
    return 1
}

daemon_pid() {
    local f pid
    f=$(pidfile "$1")
    [ -f "$f" ] || return 1
    pid=$(cat "$f" 2>/dev/null) || return 1
    is_ours "$pid" || return 1
    printf '%s' "$pid"
}

# Any process started with our conf (covers lost pid files).
stray_pids() {
    local f p
    for f in $(grep -lsaF -- "$CONF" /proc/[0-9]*/cmdline 2>/dev/null); do
        p=${f#/proc/}; p=${p%/cmdline}
        [ "$p" != "$$" ] && is_ours "$p" && printf '%s\n' "$p"
    done
    return 0
}

daemon_log() {
    case "$1" in
        mon) printf '%s/mon.a.log' "$LOG" ;;
        osd) printf '%s/osd.0.log' "$LOG" ;;
        rgw) printf '%s/client.rgw.a.log' "$LOG" ;;
    esac
}

show_logs() {
    local d f
    for d in "$@"; do
        for f in "$LOG/$d.out" "$(daemon_log "$d")"; do
            [ -s "$f" ] || continue
            printf -- '----- last lines of %s -----\n' "$f" >&2
            grep -v '^[[:space:]]*$' "$f" | tail -n 25 >&2
        done
    done
}

launch() {
    local name=$1 bin=$2; shift 2
    : >"$LOG/$name.out"
    setsid env LD_LIBRARY_PATH="$(lib_path)" "$ROOT/usr/bin/$bin" -c "$CONF" "$@" \
        >>"$LOG/$name.out" 2>&1 </dev/null 8>&- 9>&- &
    printf '%s\n' "$!" >"$(pidfile "$name")"
}

http_code() {
    if command -v curl >/dev/null; then
        curl -s -o /dev/null -m 3 -w '%{http_code}' "http://127.0.0.1:$PORT/" 2>/dev/null || true
    else
        # bash-only fallback
        ( exec 3<>"/dev/tcp/127.0.0.1/$PORT" || exit 0
          printf 'GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
          IFS=' ' read -r -t 3 _ code _ <&3 && printf '%s' "$code" ) 2>/dev/null || true
    fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

endpoint_up() { [ "$(http_code)" = 200 ]; }

kill_group() {
    # kill_group <label> <pid>...: TERM, wait up to STOP_TIMEOUT, then KILL.
    local label=$1; shift
    local pids=("$@") p alive deadline
    [ ${#pids[@]} -gt 0 ] || return 0
    kill -TERM "${pids[@]}" 2>/dev/null || true
    deadline=$(( $(date +%s) + STOP_TIMEOUT ))
    while :; do
        alive=()
        for p in "${pids[@]}"; do is_ours "$p" && alive+=("$p"); done
        [ ${#alive[@]} -gt 0 ] || return 0
        if [ "$(date +%s)" -ge "$deadline" ]; then
            say "$label did not stop within ${STOP_TIMEOUT}s; sending SIGKILL to ${alive[*]}"
            kill -KILL "${alive[@]}" 2>/dev/null || true
            sleep 0.5
            return 0
        fi
        sleep 0.1
    done
}

do_stop() {
    local t0 d pid any=0 s
    t0=$(now)
    # One at a time: radosgw first (it flushes to the OSD while stopping),
    # then the OSD (it tells the monitor it goes down), then the monitor,
    # then anything else still running with our conf.
    for d in rgw osd mon; do
        if pid=$(daemon_pid "$d"); then
            any=1
            kill_group "$d" "$pid"
        fi
    done
    s=$(stray_pids)
    if [ -n "$s" ]; then
        any=1
        # shellcheck disable=SC2086
        kill_group "leftover daemons" $s
    fi
    for d in "${DAEMONS_ORDER[@]}"; do rm -f "$(pidfile "$d")"; done
    if [ $any = 1 ]; then say "stopped in $(elapsed "$t0") s"; else say "not running"; fi
    return 0
}

# ---------------------------------------------------------------- config ----

write_conf() {
    local fsid mon_port libdir asok
    fsid=$(cat "$DATA/fsid")
    mon_port=$(cat "$DATA/mon_port")
    libdir=$(arch_libdir) || die "no ceph plugin dir under $ROOT (broken install? rm -rf $CACHE)"
    # unix socket paths are limited to 107 bytes; disable admin sockets on very long paths
    asok="$RUN/\$name.asok"
    [ ${#RUN} -lt 80 ] || asok=""
    cat >"$CONF.tmp" <<EOF
# generated by deploy/s3/rgw.sh on every start; edits are overwritten
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$mon_port
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
ms bind ipv6 = false
# internal (cluster) auth is off; S3 requests are still signed and checked
auth cluster required = none
auth service required = none
auth client required = none
# with auth none the default 'secure' messenger mode fails with -13
ms mon client mode = crc secure
ms mon service mode = crc secure
ms mon cluster mode = crc secure
ms client mode = crc secure
ms service mode = crc secure
ms cluster mode = crc secure
run dir = $RUN
admin socket = $asok
log file = $LOG/\$name.log
mon cluster log file = $LOG/cluster.log
crash dir = $DATA/crash
plugin dir = $libdir/ceph
erasure code dir = $libdir/ceph/erasure-code
osd class dir = $libdir/rados-classes
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
osd crush chooseleaf type = 0
mon data avail warn = 2
mon data avail crit = 1
# a single monitor: commit map changes quickly instead of batching them for 1 s
paxos propose interval = 0.1

[mon]
mon data = $DATA/mon/ceph-\$id

[osd]
osd data = $DATA/osd/ceph-\$id
osd objectstore = bluestore
bluestore block create = true
bluestore block size = 10737418240
bluestore fsck on mount = false
bluestore cache autotune = false
bluestore cache size = 67108864
osd memory target = 536870912
# fewer op shards: less memory, and each shard re-opens the block file at start
osd op num shards = 2
osd op num threads per shard = 2
# the aio thread polls with this timeout; every block-file close waits for it
bdev aio poll ms = 50
osd crush update on start = true
crush location = root=default host=umbra-s3

[client.rgw.a]
# tcp_nodelay: without it a small GET waits ~40 ms on delayed ACKs (measured: 44 ms per 5 KB GET)
rgw frontends = beast endpoint=127.0.0.1:$PORT tcp_nodelay=1
rgw thread pool size = 64
rgw enable usage log = false
# started together with the OSD: notice the OSD coming up within 1 s, not 5 s
objecter tick interval = 1
# no background lifecycle (expiration) worker: its 5 s retry sleeps delay
# shutdown; lifecycle rules can still be stored and read back
rgw enable lc threads = false
EOF
    mv "$CONF.tmp" "$CONF"
}

find_python() {
    local py
    for py in /usr/bin/python3 python3; do
        command -v "$py" >/dev/null || continue
        if PYTHONPATH="$ROOT/usr/lib/python3/dist-packages" LD_LIBRARY_PATH=$(lib_path) \
            "$py" -c 'import rados' >/dev/null 2>&1; then
            printf '%s' "$py"; return 0
        fi
    done
    return 1
}

# Wait until our monitor listens (or fail with its log).
wait_mon() {
    local _ port
    port=$(cat "$DATA/mon_port")
    for _ in $(seq 1 150); do
        daemon_pid mon >/dev/null || { show_logs mon; die "the monitor exited during start"; }
        port_open "$port" && return 0
        sleep 0.1
    done
    show_logs mon
    die "the monitor does not listen on 127.0.0.1:$port after 15 s"
}

# One-time cluster setup: monitor store, OSD registration + bluestore mkfs,
# the rgw pools (created up front so the first S3 calls do not wait).
init_cluster() {
    local py osd_uuid osd_id
    say "creating a new cluster in $DATA..."
    rm -rf "$DATA/mon" "$DATA/osd" "$RUN" "$LOG" "$DATA/crash" "$DATA/monmap" "$CONF" "$KEYS" "$CREDS"
    mkdir -p "$DATA/mon/ceph-a" "$DATA/osd/ceph-0" "$RUN" "$LOG" "$DATA/crash"
    cat /proc/sys/kernel/random/uuid >"$DATA/fsid"
    printf '%s\n' "${UMBRA_S3_MON_PORT:-3300}" >"$DATA/mon_port"
    write_conf
    cephx monmaptool --create --addv a "[v2:127.0.0.1:$(cat "$DATA/mon_port")]" \
        --fsid "$(cat "$DATA/fsid")" "$DATA/monmap" >"$LOG/mkfs.out" 2>&1 \
        || { cat "$LOG/mkfs.out" >&2; die "monmaptool failed"; }
    cephx ceph-mon -c "$CONF" --mkfs -i a --monmap "$DATA/monmap" >>"$LOG/mkfs.out" 2>&1 \
        || { tail -n 25 "$LOG/mkfs.out" >&2; die "ceph-mon --mkfs failed"; }
    say "starting monitor..."
    launch mon ceph-mon -f -i a
    wait_mon
    py=$(find_python) || die "python3 with the unpacked python3-rados does not import (need Debian's /usr/bin/python3)"
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    say "registering the OSD and the gateway pools..."
    osd_id=$(PYTHONPATH="$ROOT/usr/lib/python3/dist-packages" LD_LIBRARY_PATH=$(lib_path) \
        "$py" - "$CONF" "$osd_uuid" 2>>"$LOG/mkfs.out" <<'PY'
import json, sys, rados
conf, uuid = sys.argv[1], sys.argv[2]
c = rados.Rados(conffile=conf, name="client.admin")
c.connect(timeout=60)
def cmd(**kw):
    ret, out, err = c.mon_command(json.dumps(kw), b"", timeout=60)
    if ret != 0:
        sys.exit("mon command %r failed: %d %s" % (kw, ret, err))
    return out
osd_id = json.loads(cmd(prefix="osd new", uuid=uuid, format="json"))["osdid"]
for pool in (".rgw.root", "default.rgw.control", "default.rgw.meta", "default.rgw.log",
             "default.rgw.buckets.index", "default.rgw.buckets.data",
             "default.rgw.buckets.non-ec"):
    cmd(prefix="osd pool create", pool=pool, pg_num=8, pgp_num=8)
    cmd(prefix="osd pool application enable", pool=pool, app="rgw")
print(osd_id)
c.shutdown()
PY
    ) || { show_logs mon; tail -n 10 "$LOG/mkfs.out" >&2; die "could not register the OSD with the monitor"; }
    [ "$osd_id" = 0 ] || die "unexpected OSD id '$osd_id' (expected 0)"
    say "formatting the OSD (bluestore on a 10 GiB sparse file)..."
    cephx ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" >>"$LOG/mkfs.out" 2>&1 \
        || { tail -n 25 "$LOG/mkfs.out" >&2; tail -n 25 "$LOG/osd.0.log" >&2; die "ceph-osd --mkfs failed"; }
    touch "$DATA/.initialized"
}

ensure_user() {
    local ak sk r
    if [ ! -s "$KEYS" ]; then
        say "creating S3 user '$S3_USER'..."
        r=$(head -c 4096 /dev/urandom | LC_ALL=C tr -dc 'A-Z0-9'); ak=${r:0:20}
        r=$(head -c 4096 /dev/urandom | LC_ALL=C tr -dc 'A-Za-z0-9'); sk=${r:0:40}
        if cephx radosgw-admin -c "$CONF" user info --uid="$S3_USER" >/dev/null 2>&1; then
            cephx radosgw-admin -c "$CONF" key create --uid="$S3_USER" --key-type=s3 \
                --access-key="$ak" --secret-key="$sk" >"$LOG/user.out" 2>&1
        else
            cephx radosgw-admin -c "$CONF" user create --uid="$S3_USER" --display-name="Umbra tests" \
                --access-key="$ak" --secret-key="$sk" >"$LOG/user.out" 2>&1
        fi || { tail -n 20 "$LOG/user.out" >&2; return 1; }
        umask 077
        printf 'UMBRA_S3_ACCESS_KEY=%s\nUMBRA_S3_SECRET_KEY=%s\n' "$ak" "$sk" >"$KEYS.tmp"
        mv "$KEYS.tmp" "$KEYS"
    fi
    { printf 'UMBRA_S3_ENDPOINT=127.0.0.1:%s\n' "$PORT"; cat "$KEYS"; } >"$CREDS.tmp"
    mv "$CREDS.tmp" "$CREDS"
}

wait_up() {
    local deadline d
    deadline=$(( $(date +%s) + START_TIMEOUT ))
    while ! endpoint_up; do
        for d in "${DAEMONS_ORDER[@]}"; do
            if ! daemon_pid "$d" >/dev/null; then
                printf 'rgw: ERROR: the %s daemon exited during start\n' "$d" >&2
                show_logs "$d"
                return 1
            fi
        done
        if [ "$(date +%s)" -ge "$deadline" ]; then
            printf 'rgw: ERROR: no answer on 127.0.0.1:%s after %ss\n' "$PORT" "$START_TIMEOUT" >&2
            show_logs "${DAEMONS_ORDER[@]}"
            return 1
        fi
        sleep 0.2
    done
}

rotate_logs() {
    local f
    for f in "$LOG"/*.log; do
        [ -s "$f" ] && mv -f "$f" "$f.prev"
    done
    return 0
}

all_running() {
    local d
    for d in "${DAEMONS_ORDER[@]}"; do daemon_pid "$d" >/dev/null || return 1; done
}

on_start_exit() {
    local rc=$?
    if [ "$rc" != 0 ]; then
        say "start failed (exit $rc); stopping what was started"
        do_stop >/dev/null 2>&1 || true
    fi
}

do_start() {
    local t0 d fresh=0
    t0=$(now)
    do_install
    mkdir -p "$DATA"
    exec 9>"$DATA/.lock"
    flock 9
    if all_running && endpoint_up; then
        ensure_user || die "could not create the S3 user"
        say "already running at http://127.0.0.1:$PORT (data: $DATA)"
        return 0
    fi
    if [ -n "$(stray_pids)" ]; then
        say "found a partly running instance; stopping it first"
        do_stop
    fi
    if port_open "$PORT"; then
        die "127.0.0.1:$PORT is already in use by another program (set UMBRA_S3_PORT)"
    fi
    local mon_port=${UMBRA_S3_MON_PORT:-3300}
    [ ! -f "$DATA/.initialized" ] || mon_port=$(cat "$DATA/mon_port")
    if port_open "$mon_port"; then
        die "127.0.0.1:$mon_port (monitor) is already in use by another program (for a new data dir: set UMBRA_S3_MON_PORT)"
    fi
    case "$(stat -f -c %T "$DATA" 2>/dev/null)" in
        tmpfs|ramfs) die "$DATA is on $(stat -f -c %T "$DATA"); bluestore needs O_DIRECT: put UMBRA_S3_DATA on a disk filesystem" ;;
    esac
    # from here on, any failure stops what was started
    trap 'on_start_exit' EXIT
    if [ ! -f "$DATA/.initialized" ]; then
        fresh=1
        init_cluster
    else
        mkdir -p "$RUN" "$LOG" "$DATA/crash"
        write_conf
        rotate_logs
        say "starting monitor..."
        launch mon ceph-mon -f -i a
    fi
    say "starting osd..."
    launch osd ceph-osd -f -i 0
    say "starting radosgw on 127.0.0.1:$PORT..."
    launch rgw radosgw -f -n client.rgw.a
    wait_up || exit 1
    if ! ensure_user; then
        show_logs rgw
        die "could not create the S3 user"
    fi
    trap - EXIT
    if [ $fresh = 1 ]; then
        say "up (new cluster) in $(elapsed "$t0") s: http://127.0.0.1:$PORT, credentials in $CREDS"
    else
        say "up in $(elapsed "$t0") s: http://127.0.0.1:$PORT, credentials in $CREDS"
    fi
}

do_status() {
    local d pid line="" code
    for d in "${DAEMONS_ORDER[@]}"; do
        if pid=$(daemon_pid "$d"); then line+=" $d=$pid"; else line+=" $d=down"; fi
    done
    code=$(http_code)
    if [ "$code" = 200 ] && daemon_pid rgw >/dev/null; then
        say "up: http://127.0.0.1:$PORT answers (pids:$line; data: $DATA)"
        return 0
    fi
    if [ "$code" = 200 ]; then
        say "down: our radosgw is not running, but another program answers on 127.0.0.1:$PORT (pids:$line)"
    else
        say "down: no answer on 127.0.0.1:$PORT (pids:$line)"
    fi
    return 1
}

do_env() {
    [ -s "$CREDS" ] || die "no credentials yet ($CREDS); run: $0 start"
    cat "$CREDS"
}

usage() {
    sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

case "${1:-}" in
    install) do_install ;;
    start)   do_start ;;
    stop)    do_stop ;;
    status)  do_status ;;
    env)     do_env ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
esac
