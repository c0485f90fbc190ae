#!/usr/bin/env bash
# Real PostgreSQL 15 server for tests: Debian 12's binaries, run from
# /usr/lib/postgresql/15/bin where postgresql-15 is installed, otherwise from
# .debs unpacked without a system install; no Docker, no systemd, no cluster
# registered with Debian's pg_ctlcluster. Listens on 127.0.0.1 only, password
# (scram-sha-256) auth, fsync on.
#
#   deploy/postgres/pg.sh install        find the binaries, or download + unpack
#                                        the .debs into $UMBRA_PG_CACHE
#   deploy/postgres/pg.sh start          install if needed, initdb once (user
#                                        and database 'umbra'), start, wait
#   deploy/postgres/pg.sh stop           fast shutdown, immediate after the timeout
#   deploy/postgres/pg.sh restart        stop + start
#   deploy/postgres/pg.sh status         say whether it answers (exit 0 if up)
#   deploy/postgres/pg.sh env            print UMBRA_DATABASE_URL=...
#   deploy/postgres/pg.sh psql ARGS...   run psql as 'umbra' (database umbra
#                                        unless ARGS name another with -d)
#   deploy/postgres/pg.sh createdb NAME  create database NAME if it is missing
#
# Environment:
#   UMBRA_PG_CACHE          unpacked packages      (default <repo>/.build/postgres)
#   UMBRA_PG_DATA           server files           (default <repo>/.build/postgres-data)
#                           pgdata/ (the cluster), postgresql.log, password,
#                           the unix socket
#   UMBRA_PG_PORT           port on 127.0.0.1      (default 55432)
#   UMBRA_PG_START_TIMEOUT  seconds to wait for the server (default 60)
#   UMBRA_PG_STOP_TIMEOUT   seconds of fast shutdown before immediate (default 20)
#   UMBRA_PG_USER           account the server runs as when started by root
#                           (default nobody; postgres refuses to run as root)
#   UMBRA_PG_SYSTEM=0       ignore /usr/lib/postgresql/15 and use the .debs
#
# Needs: util-linux (flock; setpriv or runuser when run as root), and apt-get/
# dpkg (Debian 12) only if postgresql-15 is not installed. As root the server
# runs as $UMBRA_PG_USER, so every directory above UMBRA_PG_DATA (and
# UMBRA_PG_CACHE) must be enterable by that user; start checks and says so.
set -euo pipefail
umask 022

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd -P)

abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

CACHE=$(abspath "${UMBRA_PG_CACHE:-$REPO/.build/postgres}")
DATA=$(abspath "${UMBRA_PG_DATA:-$REPO/.build/postgres-data}")
PORT=${UMBRA_PG_PORT:-55432}
START_TIMEOUT=${UMBRA_PG_START_TIMEOUT:-60}
STOP_TIMEOUT=${UMBRA_PG_STOP_TIMEOUT:-20}
PG_USER=${UMBRA_PG_USER:-nobody}

PG_MAJOR=15
SYSTEM_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
ROOT=$CACHE/root                 # the unpacked package tree
MARKER=$CACHE/installed.txt      # package=version list, written last
PGDATA=$DATA/pgdata              # the cluster (initdb)
LOGFILE=$DATA/postgresql.log
PWFILE=$DATA/password            # the superuser's password, mode 600
INITED=$DATA/.initialized        # written when initdb + database 'umbra' are done
DB_USER=umbra
DB_NAME=umbra

TOP_PKGS=(postgresql-$PG_MAJOR postgresql-client-$PG_MAJOR libpq5)
CHECK_BINS=(initdb postgres pg_ctl pg_isready psql)

say() { printf 'pg: %s\n' "$*"; }
die() { printf 'pg: ERROR: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------- install ---

BIN=""
LIBPATH=""

system_ok() {
    [ "${UMBRA_PG_SYSTEM:-1}" != 0 ] || return 1
    local b
    for b in "${CHECK_BINS[@]}"; do [ -x "$SYSTEM_BIN/$b" ] || return 1; done
}

unpacked_libpath() {
    local d out=""
    for d in "$ROOT"/usr/lib/*-linux-gnu "$ROOT"/lib/*-linux-gnu; do
        [ -d "$d" ] && out+="${out:+:}$d"
    done
    printf '%s' "$out${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

missing_libs() {
    local b
    for b in "${CHECK_BINS[@]}"; do
        [ -x "$ROOT$SYSTEM_BIN/$b" ] || { printf '%s(binary)\n' "$b"; continue; }
        LD_LIBRARY_PATH=$(unpacked_libpath) ldd "$ROOT$SYSTEM_BIN/$b" 2>/dev/null \
            | awk '/not found/ { print $1 }'
    done | sort -u
}

unpacked_ok() {
    [ -f "$MARKER" ] && [ -d "$ROOT" ] || return 1
    local missing
    missing=$(missing_libs)
    if [ -n "$missing" ]; then
        say "cached install in $CACHE is incomplete on this machine (missing: ${missing//$'\n'/ }); reinstalling"
        return 1
    fi
}

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
    if [ "$(id -u)" != 0 ]; then
        case " ${APT_OPTS[*]} " in *Dir::State::Lists*) ;; *) use_private_lists ;; esac
    fi
    apt-get "${APT_OPTS[@]}" -qq update >"$CACHE/apt-update.log" 2>&1 \
        || { tail -n 20 "$CACHE/apt-update.log" >&2; die "apt-get update failed"; }
}

# Print "name=version" for every package a system install would add or
# upgrade, plus the top-level packages themselves even if installed.
resolve_packages() {
    local sim p
    sim=$(apt-get "${APT_OPTS[@]}" -o Debug::NoLocking=1 install -s -y --no-install-recommends "${TOP_PKGS[@]}" 2>&1) \
        || { printf '%s\n' "$sim" | tail -n 20 >&2; return 1; }
    {
        printf '%s\n' "$sim" | sed -n 's/^Inst \([^ ]*\) \(\[[^]]*\] \)\{0,1\}(\([^ ]*\) .*/\1=\3/p'
        for p in "${TOP_PKGS[@]}"; do
            grep -q "^Inst $p " <<<"$sim" || printf '%s\n' "$p"
        done
    } | sort -u
}

# Sets PKGS; fetches package lists only when apt does not know the packages.
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

download_and_unpack() {
    local t0 pkgs n dl=$CACHE/debs.tmp new=$CACHE/root.tmp missing
    t0=$(now)
    command -v apt-get >/dev/null && command -v dpkg >/dev/null \
        || die "no $SYSTEM_BIN and no apt-get/dpkg: this script needs Debian 12 (or postgresql-$PG_MAJOR installed)"
    say "resolving packages (${TOP_PKGS[*]} and their dependencies)..."
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
        # shellcheck disable=SC2086
        (cd "$dl" && apt-get "${APT_OPTS[@]}" -q download $pkgs >"$CACHE/apt-download.log" 2>&1) \
            || { tail -n 20 "$CACHE/apt-download.log" >&2; die "apt-get download failed"; }
    fi
    say "unpacking $(ls "$dl"/*.deb | wc -l) packages ($(du -sh "$dl" | cut -f1))..."
    ls -S "$dl"/*.deb | tr '\n' '\0' | xargs -0 -I{} -P "$(nproc 2>/dev/null || echo 2)" dpkg -x {} "$new" \
        || die "dpkg -x failed"
    rm -rf "$ROOT" "$MARKER"
    mv "$new" "$ROOT"
    rm -rf "$dl"
    missing=$(missing_libs)
    [ -z "$missing" ] || die "unpacked binaries still miss libraries: ${missing//$'\n'/ }"
    printf '%s\n' "$pkgs" >"$MARKER"
    say "installed $n packages into $CACHE in $(elapsed "$t0") s"
}

# Sets BIN and LIBPATH if the binaries are there already (no download).
find_bins() {
    if system_ok; then
        BIN=$SYSTEM_BIN; LIBPATH=${LD_LIBRARY_PATH:-}
    elif [ -f "$MARKER" ] && [ -x "$ROOT$SYSTEM_BIN/postgres" ]; then
        BIN=$ROOT$SYSTEM_BIN; LIBPATH=$(unpacked_libpath)
    else
        return 1
    fi
}

# Sets BIN and LIBPATH; downloads the packages if needed.
do_install() {
    if system_ok; then
        BIN=$SYSTEM_BIN
        LIBPATH=${LD_LIBRARY_PATH:-}
    else
        mkdir -p "$CACHE"
        exec 8>"$CACHE/.lock"
        flock 8
        unpacked_ok || download_and_unpack
        exec 8>&-
        BIN=$ROOT$SYSTEM_BIN
        LIBPATH=$(unpacked_libpath)
    fi
    local v
    v=$(pgx initdb --version 2>&1) || die "$BIN/initdb does not run: $v"
    [ "${1:-}" != verbose ] || say "using $BIN ($v)"
}

# Runs one of the binaries as the invoking user (client tools).
pgx() {
    local b=$1; shift
    LD_LIBRARY_PATH=$LIBPATH "$BIN/$b" "$@"
}

# ---------------------------------------------------------------- server ----

# Runs one of the binaries as the server account: $PG_USER under root (initdb,
# pg_ctl and postgres refuse root), the invoking user otherwise. From /, with
# the lock fds closed (the postmaster would otherwise hold the locks).
as_pg() {
    local b=$1; shift
    as_pg_cmd env LD_LIBRARY_PATH="$LIBPATH" "$BIN/$b" "$@"
}

as_pg_cmd() {
    if [ "$(id -u)" != 0 ]; then
        (cd / && "$@" 8>&- 9>&-)
    elif command -v setpriv >/dev/null; then
        (cd / && setpriv --reuid="$PG_UID" --regid="$PG_GID" --clear-groups "$@" 8>&- 9>&-)
    else
        (cd / && runuser -u "$PG_USER" -- "$@" 8>&- 9>&-)
    fi
}

resolve_user() {
    if [ "$(id -u)" = 0 ]; then
        PG_UID=$(id -u "$PG_USER" 2>/dev/null) || die "no user '$PG_USER' (set UMBRA_PG_USER to an unprivileged account)"
        PG_GID=$(id -g "$PG_USER")
        [ "$PG_UID" != 0 ] || die "UMBRA_PG_USER=$PG_USER is root; postgres refuses to run as root"
    else
        PG_UID=$(id -u); PG_GID=$(id -g)
    fi
}

# The first directory from / down to $1 that the server account cannot enter.
blocking_dir() {
    local p=$1 d="" part
    local IFS=/
    for part in $p; do
        [ -n "$part" ] || continue
        d+="/$part"
        [ -e "$d" ] || return 1
        as_pg_cmd test -x "$d" || { printf '%s' "$d"; return 0; }
    done
    return 1
}

check_access() {
    local what=$1 path=$2 var=$3 bad
    if bad=$(blocking_dir "$path"); then
        die "$what $path is not reachable for user '$PG_USER' (uid $PG_UID): it cannot enter $bad ($(stat -c '%A %U:%G' "$bad")). Set $var to a directory below ones that user can enter (e.g. /var/tmp/umbra-pg), or chmod o+x $bad"
    fi
}

socket_dir() {
    # unix socket paths are limited to 107 bytes; TCP only on very long paths
    if [ $(( ${#DATA} + 20 )) -lt 107 ]; then printf '%s' "$DATA"; fi
}

write_conf() {
    cat >"$PGDATA/umbra.conf.tmp" <<EOF
# generated by deploy/postgres/pg.sh on every start; edits are overwritten
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$(socket_dir)'
unix_socket_permissions = 0700
max_connections = 200
password_encryption = 'scram-sha-256'
# a real server: durable commits
fsync = on
synchronous_commit = on
full_page_writes = on
# the log goes to $LOGFILE (pg_ctl -l)
logging_collector = off
log_destination = 'stderr'
log_line_prefix = '%m [%p] %q%u@%d '
EOF
    cat >"$PGDATA/pg_hba.conf.tmp" <<EOF
# generated by deploy/postgres/pg.sh; edits are overwritten
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 scram-sha-256
host    all       all   127.0.0.1/32  scram-sha-256
EOF
    mv "$PGDATA/umbra.conf.tmp" "$PGDATA/umbra.conf"
    mv "$PGDATA/pg_hba.conf.tmp" "$PGDATA/pg_hba.conf"
    if [ "$(id -u)" = 0 ]; then chown "$PG_UID:$PG_GID" "$PGDATA/umbra.conf" "$PGDATA/pg_hba.conf"; fi
}

password() { cat "$PWFILE"; }

# psql as the superuser over TCP; the password comes from the file.
client() {
    local b=$1; shift
    PGPASSWORD=$(password) PGHOST=127.0.0.1 PGPORT=$PORT PGUSER=$DB_USER PGDATABASE=$DB_NAME \
        PGCONNECT_TIMEOUT=10 pgx "$b" "$@"
}

answers() { pgx pg_isready -q -h 127.0.0.1 -p "$PORT" -t 3 >/dev/null 2>&1; }

# Whether our postmaster runs (pg_ctl status reads pgdata/postmaster.pid).
ours_running() {
    [ -f "$PGDATA/postmaster.pid" ] || return 1
    as_pg pg_ctl status -D "$PGDATA" >/dev/null 2>&1
}

show_log() {
    [ -s "$LOGFILE" ] || return 0
    printf -- '----- last lines of %s -----\n' "$LOGFILE" >&2
    tail -n 25 "$LOGFILE" >&2
}

init_cluster() {
    local r pw tmp=$DATA/password.initdb locale=C
    say "creating a new cluster in $PGDATA..."
    rm -rf "$PGDATA" "$tmp"
    if [ ! -s "$PWFILE" ]; then
        r=$(head -c 4096 /dev/urandom | LC_ALL=C tr -dc 'A-Za-z0-9')
        (umask 077 && printf '%s\n' "${r:0:32}" >"$PWFILE.tmp")
        chmod 600 "$PWFILE.tmp"
        mv "$PWFILE.tmp" "$PWFILE"
    fi
    pw=$(password)
    [ -n "$pw" ] || die "empty password file $PWFILE"
    (umask 077 && printf '%s\n' "$pw" >"$tmp")
    if [ "$(id -u)" = 0 ]; then chown "$PG_UID:$PG_GID" "$tmp"; fi
    if [ "$(locale -a 2>/dev/null | grep -cix 'c.utf-\{0,1\}8')" != 0 ]; then locale=C.UTF-8; fi
    mkdir -m 700 "$PGDATA"
    if [ "$(id -u)" = 0 ]; then chown "$PG_UID:$PG_GID" "$PGDATA"; fi
    as_pg initdb -D "$PGDATA" --username="$DB_USER" --pwfile="$tmp" \
        --auth-local=scram-sha-256 --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale="$locale" >"$DATA/initdb.log" 2>&1 \
        || { rm -f "$tmp"; tail -n 25 "$DATA/initdb.log" >&2; die "initdb failed"; }
    rm -f "$tmp"
    printf "\ninclude_if_exists = 'umbra.conf'\n" >>"$PGDATA/postgresql.conf"
}

start_server() {
    write_conf
    [ ! -s "$LOGFILE" ] || mv -f "$LOGFILE" "$LOGFILE.prev"
    as_pg_cmd touch "$LOGFILE"
    # pg_ctl -w waits for postmaster.pid to say "ready"; it detaches (setsid)
    if ! as_pg pg_ctl start -D "$PGDATA" -l "$LOGFILE" -w -t "$START_TIMEOUT" -s >>"$DATA/pg_ctl.log" 2>&1; then
        tail -n 5 "$DATA/pg_ctl.log" >&2
        show_log
        return 1
    fi
}

wait_up() {
    local deadline
    deadline=$(( $(date +%s) + START_TIMEOUT ))
    until answers; do
        ours_running || { show_log; printf 'pg: ERROR: the server exited during start\n' >&2; return 1; }
        if [ "$(date +%s)" -ge "$deadline" ]; then
            show_log
            printf 'pg: ERROR: no answer on 127.0.0.1:%s after %ss\n' "$PORT" "$START_TIMEOUT" >&2
            return 1
        fi
        sleep 0.1
    done
}

ensure_database() {
    local name=$1 out
    out=$(client psql -X -q -v ON_ERROR_STOP=1 -d postgres -v name="$name" 2>&1 <<'SQL'
SELECT format('CREATE DATABASE %I', :'name')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'name') \gexec
SQL
    ) || case "$out" in
        *"already exists"*) ;;   # created concurrently by another caller
        *) printf '%s\n' "$out" >&2; return 1 ;;
    esac
}

prepare_dirs() {
    mkdir -p "$DATA"
    chmod 700 "$DATA"
    if [ "$(id -u)" = 0 ]; then chown "$PG_UID:$PG_GID" "$DATA"; fi
    check_access "data dir" "$DATA" UMBRA_PG_DATA
    case "$BIN" in "$ROOT"/*) check_access "package cache" "$BIN" UMBRA_PG_CACHE ;; esac
    as_pg_cmd test -w "$DATA" || die "user '$PG_USER' cannot write to $DATA"
}

on_start_exit() {
    local rc=$?
    if [ "$rc" != 0 ]; then
        say "start failed (exit $rc); stopping what was started"
        do_stop >/dev/null 2>&1 || true
    fi
}

do_start() {
    local t0 fresh=0
    t0=$(now)
    do_install
    resolve_user
    prepare_dirs
    exec 9>"$DATA/.lock"
    flock 9
    if ours_running; then
        if [ -f "$INITED" ]; then
            wait_up || die "the running server does not answer"
            say "already running on 127.0.0.1:$PORT (data: $DATA)"
            return 0
        fi
        say "found a server from an unfinished setup; stopping it first"
        do_stop
    fi
    if answers; then
        die "127.0.0.1:$PORT is answered by another PostgreSQL server (set UMBRA_PG_PORT)"
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        die "127.0.0.1:$PORT is already in use by another program (set UMBRA_PG_PORT)"
    fi
    trap 'on_start_exit' EXIT
    if [ ! -f "$INITED" ]; then
        fresh=1
        init_cluster
    fi
    say "starting postgres on 127.0.0.1:$PORT..."
    start_server || exit 1
    wait_up || exit 1
    if [ $fresh = 1 ]; then
        ensure_database "$DB_NAME" || die "could not create database '$DB_NAME'"
        touch "$INITED"
    fi
    trap - EXIT
    if [ $fresh = 1 ]; then
        say "up (new cluster) in $(elapsed "$t0") s: 127.0.0.1:$PORT, data in $DATA"
    else
        say "up in $(elapsed "$t0") s: 127.0.0.1:$PORT, data in $DATA"
    fi
}

do_stop() {
    local t0
    t0=$(now)
    if ! [ -f "$PGDATA/postmaster.pid" ] || ! find_bins; then
        say "not running"
        return 0
    fi
    resolve_user
    if ! ours_running; then
        say "not running"
        return 0
    fi
    if ! as_pg pg_ctl stop -D "$PGDATA" -m fast -w -t "$STOP_TIMEOUT" -s >>"$DATA/pg_ctl.log" 2>&1; then
        say "fast shutdown did not finish within ${STOP_TIMEOUT}s; immediate shutdown"
        as_pg pg_ctl stop -D "$PGDATA" -m immediate -w -t 10 -s >>"$DATA/pg_ctl.log" 2>&1 \
            || { tail -n 5 "$DATA/pg_ctl.log" >&2; die "could not stop the server"; }
    fi
    say "stopped in $(elapsed "$t0") s"
}

do_status() {
    find_bins || { say "down: not installed (no $SYSTEM_BIN, nothing in $CACHE)"; return 1; }
    resolve_user
    local up=0 ours=0
    answers && up=1
    [ -d "$PGDATA" ] && ours_running && ours=1
    if [ $up = 1 ] && [ $ours = 1 ]; then
        say "up: 127.0.0.1:$PORT answers (data: $DATA)"
        return 0
    fi
    if [ $up = 1 ]; then
        say "down: our server is not running, but another server answers on 127.0.0.1:$PORT"
    elif [ $ours = 1 ]; then
        say "down: our server runs but does not answer on 127.0.0.1:$PORT (starting, or another port?)"
    else
        say "down: no answer on 127.0.0.1:$PORT"
    fi
    return 1
}

need_password() {
    [ -s "$PWFILE" ] && [ -f "$INITED" ] || die "no server set up yet in $DATA; run: $0 start"
}

do_env() {
    need_password
    printf 'UMBRA_DATABASE_URL=postgresql+psycopg://%s:%s@127.0.0.1:%s/%s\n' "$DB_USER" "$(password)" "$PORT" "$DB_NAME"
}

do_psql() {
    need_password
    find_bins || die "not installed; run: $0 start"
    client psql "$@"
}

do_createdb() {
    [ $# = 1 ] && [ -n "$1" ] || die "usage: $0 createdb NAME"
    [ "$(printf '%s' "$1" | wc -c)" -le 63 ] || die "database name longer than 63 bytes: $1"
    need_password
    find_bins || die "not installed; run: $0 start"
    ensure_database "$1" || die "could not create database '$1'"
}

usage() {
    sed -n '2,34p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

cmd=${1:-}
[ $# = 0 ] || shift
case "$cmd" in
    install)  do_install verbose ;;
    start)    do_start ;;
    stop)     do_stop ;;
    restart)  do_stop; do_start ;;
    status)   do_status ;;
    env)      do_env ;;
    psql)     do_psql "$@" ;;
    createdb) do_createdb "$@" ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
esac
