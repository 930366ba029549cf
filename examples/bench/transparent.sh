#!/usr/bin/env bash
# The sidecar in transparent mode vs the plain sidecar: `rocketmesh bench` 1 KiB sync sends,
# same run, same network namespace. (b) sends to the sidecar's listener on 127.0.0.1; (t) sends
# to 10.251.0.1:9876, an address no process listens on, which `rocketmesh iptables` redirects to
# a second sidecar running `--transparent` as uid 10001 (so each connection pays conntrack/NAT
# and the SO_ORIGINAL_DST classification). Control plane, broker, both sidecars and the load
# generator run in a namespace this script creates and deletes (needs root, iproute2, iptables,
# util-linux's setpriv); nothing touches the host's interfaces or rules.
#
#   sudo examples/bench/transparent.sh
#
# Settings (environment): DURATION (s per run, 15), ROUNDS (3, odd rounds b,t and even t,b),
#   CONNECTIONS (4), INFLIGHT (16), SIZE (1024), WARMUP (3), CARGO_TARGET_DIR (target).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

if [ -z "${RMBENCH_INSIDE:-}" ]; then
    [ "$(id -u)" -eq 0 ] || { echo "transparent.sh needs root (network namespace, iptables)" >&2; exit 1; }
    for tool in ip setpriv iptables; do
        command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install iproute2 util-linux iptables)" >&2; exit 1; }
    done
    echo "== building rocketmesh (release)" >&2
    (cd "$ROOT" && cargo build --release --bin rocketmesh --quiet)
    NS="rmbench-$$"
    ip netns add "$NS"
    trap 'ip netns pids "$NS" 2>/dev/null | xargs -r kill -9 2>/dev/null || true; ip netns delete "$NS" 2>/dev/null || true' EXIT
    ip -n "$NS" link set lo up
    # The address the load generator dials: on the namespace's own lo (no dummy driver needed);
    # the rules exclude 127.0.0.0/8, not the interface, so it is redirected.
    ip -n "$NS" addr add 10.251.0.1/32 dev lo
    RMBENCH_INSIDE=1 ip netns exec "$NS" "${BASH_SOURCE[0]}"
    exit $?
fi

DURATION="${DURATION:-15}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-4}"
INFLIGHT="${INFLIGHT:-16}"
SIZE="${SIZE:-1024}"
WARMUP="${WARMUP:-3}"
TOPIC="BenchTransparent"
SIDECAR_UID=10001

WORK="$(mktemp -d -t rocketmesh-transparent.XXXXXX)"
chmod 755 "$WORK"
# shellcheck source=examples/bench/lib.sh
. "$ROOT/examples/bench/lib.sh"

log "control plane, broker, plain sidecar (b), transparent sidecar (t) behind iptables"
SIDECAR_FLAGS="--admin 127.0.0.1:0 --vip-channel false" start_mesh
TPORT="$(free_port)"
ADMIN_T="127.0.0.1:$(free_port)"
"$BIN" iptables install --redirect-to "$TPORT" --cidrs 10.251.0.1/32 \
    --exclude-uid "$SIDECAR_UID" >"$WORK/iptables.out"
start transparent setpriv --reuid="$SIDECAR_UID" --regid="$SIDECAR_UID" --clear-groups -- \
    "$BIN" sidecar --transparent --xds "$CP_XDS" --listen "127.0.0.1:$TPORT" \
    --admin "$ADMIN_T" --vip-channel false --workers "${SIDECAR_WORKERS:-1}"
PID_T="$LAST_PID"
TARGET_T="10.251.0.1:9876"


log "warm-up: ${WARMUP}s on each target"
bench "$BROKER" "$WARMUP" >/dev/null
for t in "$SIDECAR" "$TARGET_T"; do
    bench "$t" "$WARMUP" >/dev/null
    w="$(bench "$t" "$WARMUP")"
    if [ "$(field "$w" errors)" != "0" ]; then
        echo "sends to $t still fail after the warm-up: $w" >&2
        exit 1
    fi
done

RESULTS="$WORK/results"
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
    order="b t"
    [ $((round % 2)) -eq 0 ] && order="t b"
    for t in $order; do
        case $t in
        b) target="$SIDECAR" pid="$PID_SIDECAR" ;;
        t) target="$TARGET_T" pid="$PID_T" ;;
        esac
        log "round $round/$ROUNDS: $t -> $target, ${DURATION}s"
        c0="$(cpu_ticks "$pid")"
        j="$(bench "$target" "$DURATION")"
        cpu="$(awk -v a="$c0" -v b="$(cpu_ticks "$pid")" -v t="$TCK" 'BEGIN { print (b - a) / t }')"
        echo "$t $round $(field "$j" msg_per_sec) $(field "$j" p50_us) $(field "$j" p99_us) \
$(field "$j" messages) $(field "$j" errors) $cpu" >>"$RESULTS"
    done
done

# The transparent sidecar classified the redirected connections (it did not serve them as
# direct ones): its counter says how many.
redirected="$(python3 -c 'import sys, urllib.request
text = urllib.request.urlopen("http://%s/stats/prometheus" % sys.argv[1], timeout=5).read().decode()
print(int(sum(float(l.split()[-1]) for l in text.splitlines()
              if l.startswith("rocketmq_rocketmesh_downstream_cx_transparent_nameserver"))))' "$ADMIN_T")"

awk -v rounds="$ROUNDS" -v dur="$DURATION" -v redirected="$redirected" "$AWK_MEDIAN"'
{
    t = $1; n[t]++
    tp[t, n[t]] = $3; p99[t, n[t]] = $5
    msgs[t] += $6; errs[t] += $7; cpu[t] += $8
    printf "run %s round %d: %9.0f msg/s  p50 %7.0f us  p99 %7.0f us  errors %d  cpu %.2f s\n", $1, $2, $3, $4, $5, $7, $8
}
END {
    name["b"] = "(b) sidecar, 127.0.0.1"
    name["t"] = "(t) transparent, redirected"
    printf "\nsend, %d s per run, median of %d runs\n\n", dur, rounds
    printf "%-30s %12s %10s %8s %16s\n", "target", "msg/s", "p99 us", "errors", "cpu-s/100k msg"
    split("b t", ts, " ")
    for (k = 1; k <= 2; k++) {
        t = ts[k]
        for (i = 1; i <= n[t]; i++) { x[i] = tp[t, i] }; T[t] = median(x, n[t])
        for (i = 1; i <= n[t]; i++) { x[i] = p99[t, i] }; P99[t] = median(x, n[t])
        C[t] = cpu[t] / msgs[t] * 100000
        printf "%-30s %12.0f %10.0f %8d %16.3f\n", name[t], T[t], P99[t], errs[t], C[t]
    }
    printf "\nt/b throughput %.3f, p99 %.3f, cpu per message %.3f\n", T["t"] / T["b"], P99["t"] / P99["b"], C["t"] / C["b"]
    printf "connections the transparent sidecar classified as redirected to a nameserver port: %s\n", redirected
    printf "target: t/b throughput >= 0.95 (%s), cpu per message t/b <= 1.05 (%s)\n", \
        (T["t"] / T["b"] >= 0.95) ? "met" : "NOT met", (C["t"] / C["b"] <= 1.05) ? "met" : "NOT met"
}' "$RESULTS"
