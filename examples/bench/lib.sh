# Shared by compare.sh and consume.sh (sourced, not run). Needs ROOT and WORK set and `set -euo
# pipefail`; provides: PIDS + an EXIT trap that stops every started process and removes WORK, log, AWK_MEDIAN,
# BIN (the release binary, built here), start, free_port, bench/field/cpu_ticks/rss_kb/TCK (runs
# and their figures), and start_mesh (control plane + one
# registered broker + a sidecar, setting CP_REMOTING, CP_XDS, BROKER, PID_BROKER, SIDECAR,
# PID_SIDECAR; extra sidecar flags from SIDECAR_FLAGS, broker flags from BROKER_FLAGS).

PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # Up to 5 s for a graceful stop, then SIGKILL.
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "== $*" >&2; }

# An awk function for the reports: median(arr, n) of arr[1..n] (sorts arr in place).
# Used as: awk -v ... "$AWK_MEDIAN"'<the rest of the program>'
AWK_MEDIAN='
function median(arr, n,    i, j, tmp) {
    for (i = 2; i <= n; i++) {
        tmp = arr[i]
        for (j = i - 1; j >= 1 && arr[j] > tmp; j--) arr[j + 1] = arr[j]
        arr[j + 1] = tmp
    }
    return (n % 2) ? arr[(n + 1) / 2] : (arr[n / 2] + arr[n / 2 + 1]) / 2
}
'

log "building rocketmesh (release)"
(cd "$ROOT" && cargo build --release --bin rocketmesh --quiet)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/rocketmesh"
[ -x "$BIN" ] || BIN="$ROOT/$BIN" # a relative CARGO_TARGET_DIR

# start NAME CMD...: runs CMD in the background (stdout to $WORK/NAME.out, stderr to NAME.log),
# waits (20 s at most) for its `ready ...` line and sets READY to what follows `ready ` and
# LAST_PID to its pid. Not to be called in a subshell: the EXIT trap must see every pid.
start() {
    local name="$1" line
    shift
    "$@" >"$WORK/$name.out" 2>"$WORK/$name.log" &
    LAST_PID="$!"
    PIDS+=("$LAST_PID")
    for _ in $(seq 200); do
        line="$(grep -m1 '^ready ' "$WORK/$name.out" 2>/dev/null || true)"
        if [ -n "$line" ]; then
            READY="${line#ready }"
            return
        fi
        kill -0 "$LAST_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "$name did not become ready; its log:" >&2
    cat "$WORK/$name.log" >&2
    exit 1
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_mesh: control plane, one broker registered with it, a sidecar fed over xDS.
start_mesh() {
    # No restart warm-up: the broker starts after it, and the bench topic is auto-created on its
    # first send, which needs "does not exist" at once.
    start control-plane "$BIN" control-plane --remoting 127.0.0.1:0 --xds 127.0.0.1:0 \
        --warmup-secs 0
    CP_REMOTING="$(sed -n 's/.*remoting=\([^ ]*\).*/\1/p' <<<"$READY")"
    CP_XDS="$(sed -n 's/.*xds=\([^ ]*\).*/\1/p' <<<"$READY")"
    # shellcheck disable=SC2086 # BROKER_FLAGS is a list of flags
    start broker "$BIN" broker --listen 127.0.0.1:0 --data-dir "$WORK/broker-data" \
        --name broker-a --namesrv "$CP_REMOTING" ${BROKER_FLAGS:-}
    BROKER="$READY"
    PID_BROKER="$LAST_PID"
    # shellcheck disable=SC2086 # SIDECAR_FLAGS is a list of flags
    start sidecar "$BIN" sidecar --xds "$CP_XDS" --listen 127.0.0.1:0 --workers "${SIDECAR_WORKERS:-1}" \
        ${SIDECAR_FLAGS:-}
    SIDECAR="$READY"
    PID_SIDECAR="$LAST_PID"
}

# start_baseline: when BASELINE names another rocketmesh binary (an earlier build, e.g. of the
# previous release in a second target dir), a second sidecar from it on the same control plane
# and broker, so one run measures both sidecars side by side (target "p"). Sets BASE_SIDECAR
# and PID_BASE; does nothing without BASELINE.
start_baseline() {
    [ -n "${BASELINE:-}" ] || return 0
    [ -x "$BASELINE" ] || { echo "BASELINE=$BASELINE is not an executable" >&2; exit 1; }
    start baseline "$BASELINE" sidecar --xds "$CP_XDS" --listen 127.0.0.1:0 \
        --admin 127.0.0.1:0 --workers "${SIDECAR_WORKERS:-1}"
    BASE_SIDECAR="$READY"
    PID_BASE="$LAST_PID"
}

# start_haproxy BACKEND: HAProxy in TCP mode (installed from Debian if missing) in front of
# BACKEND; sets HAPROXY (its address) and PID_HAPROXY.
start_haproxy() {
    if ! command -v haproxy >/dev/null; then
        log "installing haproxy"
        local sudo=()
        if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
        "${sudo[@]}" apt-get install -y haproxy >/dev/null ||
            { "${sudo[@]}" apt-get update >/dev/null && "${sudo[@]}" apt-get install -y haproxy >/dev/null; }
    fi
    local port
    port="$(free_port)"
    HAPROXY="127.0.0.1:$port"
    printf '%s\n' "global" "    maxconn 4096" "defaults" "    mode tcp" "    timeout connect 5s" \
        "    timeout client 60s" "    timeout server 60s" "frontend rocketmq" "    bind $HAPROXY" \
        "    default_backend broker" "backend broker" "    server broker-a $1" >"$WORK/haproxy.cfg"
    haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.out" 2>"$WORK/haproxy.log" &
    PIDS+=("$!")
    PID_HAPROXY="$!"
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return
        sleep 0.1
    done
    echo "haproxy is not listening on $HAPROXY:" >&2
    cat "$WORK/haproxy.log" >&2
    exit 1
}

# fsync_us DIR: median latency in microseconds of a 64 KiB append followed by fdatasync, in a
# scratch file in DIR (the disk the broker writes to), over about 2 s.
FSYNC_PROBE='
import os, sys, time
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
buf, lat, end = b"x" * 65536, [], time.monotonic() + 2
while time.monotonic() < end:
    t = time.perf_counter()
    os.write(fd, buf)
    os.fdatasync(fd)
    lat.append(time.perf_counter() - t)
os.close(fd)
os.unlink(path)
lat.sort()
print(f"{lat[len(lat) // 2] * 1e6:.0f}")
'
fsync_us() { python3 -c "$FSYNC_PROBE" "$1"; }

# bench TARGET SECONDS: one `rocketmesh bench --mode send` run of TOPIC, SIZE, CONNECTIONS and
# INFLIGHT (the caller's settings); prints its JSON line.
bench() {
    "$BIN" bench --target "$1" --mode send --topic "$TOPIC" --size "$SIZE" \
        --connections "$CONNECTIONS" --inflight "$INFLIGHT" --duration "$2" --json | tail -n 1
}

# field JSON KEY: a number from a bench JSON line.
field() { sed -n "s/.*\"$2\":\([0-9.]*\).*/\1/p" <<<"$1"; }

# cpu_ticks PID: user + system clock ticks so far; rss_kb PID: resident set now.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
TCK="$(getconf CLK_TCK)"
