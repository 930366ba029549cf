#!/usr/bin/env bash
# Sidecar vs direct vs HAProxy (TCP mode): `rocketmesh bench` 1 KiB sync sends at fixed
# concurrency, same machine, same run. See examples/bench/README.md.
#
#   examples/bench/compare.sh
#
# Settings (environment): DURATION (s per run, 15), ROUNDS (3; odd rounds run a,b,c and even
#   rounds c,b,a, so a drift over the run favours no target), SIDECAR_WORKERS (1),
#   CONNECTIONS (4),
# INFLIGHT (16), SIZE (1024), WARMUP (s per target, 3), CARGO_TARGET_DIR (target),
#   BASELINE (another rocketmesh binary: its sidecar runs beside ours as target p, b/p reported).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DURATION="${DURATION:-15}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-4}"
INFLIGHT="${INFLIGHT:-16}"
SIZE="${SIZE:-1024}"
WARMUP="${WARMUP:-3}"
TOPIC="BenchCompare"

WORK="$(mktemp -d -t rocketmesh-compare.XXXXXX)"
# shellcheck source=examples/bench/lib.sh
. "$ROOT/examples/bench/lib.sh"

# ----- prerequisites -----

if ! command -v haproxy >/dev/null; then
    log "installing haproxy"
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then SUDO=(sudo); fi
    "${SUDO[@]}" apt-get install -y haproxy >/dev/null ||
        { "${SUDO[@]}" apt-get update >/dev/null && "${SUDO[@]}" apt-get install -y haproxy >/dev/null; }
fi

log "control plane, broker, sidecar, haproxy"
SIDECAR_FLAGS="--admin 127.0.0.1:0" start_mesh
start_baseline
TARGETS="a b c"
[ -n "${BASELINE:-}" ] && TARGETS="a b p c"

HAPROXY_PORT="$(free_port)"
HAPROXY="127.0.0.1:$HAPROXY_PORT"
cat >"$WORK/haproxy.cfg" <<EOF
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend rocketmq
    bind $HAPROXY
    default_backend broker
backend broker
    server broker-a $BROKER
EOF
haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.out" 2>"$WORK/haproxy.log" &
PIDS+=("$!")
PID_HAPROXY="$!"
haproxy_up() { (exec 3<>"/dev/tcp/127.0.0.1/$HAPROXY_PORT") 2>/dev/null; }
for _ in $(seq 100); do
    haproxy_up && break
    sleep 0.1
done
haproxy_up || { echo "haproxy is not listening on $HAPROXY:" >&2; cat "$WORK/haproxy.log" >&2; exit 1; }

# ----- runs -----

# The first sends (direct) create the topic; the broker re-registers it, and the sidecar learns
# its route over xDS on its first request.
log "warm-up: ${WARMUP}s on each target"
for t in "$BROKER" "$SIDECAR" ${BASE_SIDECAR:-} "$HAPROXY"; do
    bench "$t" "$WARMUP" >/dev/null
done
# The sidecars' first sends can race the route; a second warm-up must be clean.
for t in "$SIDECAR" ${BASE_SIDECAR:-}; do
    w="$(bench "$t" "$WARMUP")"
    if [ "$(field "$w" errors)" != "0" ]; then
        echo "sends through the sidecar at $t still fail after the warm-up: $w" >&2
        exit 1
    fi
done

RESULTS="$WORK/results"
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
    order="$TARGETS"
    if [ $((round % 2)) -eq 0 ]; then order="$(tr ' ' '\n' <<<"$TARGETS" | tac | tr '\n' ' ')"; fi
    for t in $order; do
        case $t in
        a) target="$BROKER" pid="" ;;
        b) target="$SIDECAR" pid="$PID_SIDECAR" ;;
        c) target="$HAPROXY" pid="$PID_HAPROXY" ;;
        p) target="$BASE_SIDECAR" pid="$PID_BASE" ;;
        esac
        log "round $round/$ROUNDS: $t -> $target, ${DURATION}s"
        c0=0
        [ -n "$pid" ] && c0="$(cpu_ticks "$pid")"
        j="$(bench "$target" "$DURATION")"
        cpu=0 rss=0
        if [ -n "$pid" ]; then
            cpu="$(awk -v a="$c0" -v b="$(cpu_ticks "$pid")" -v t="$TCK" 'BEGIN { print (b - a) / t }')"
            rss="$(rss_kb "$pid")"
        fi
        echo "$t $round $(field "$j" msg_per_sec) $(field "$j" p50_us) $(field "$j" p99_us) \
$(field "$j" messages) $(field "$j" errors) $cpu $rss" >>"$RESULTS"
    done
done

# ----- report -----

awk -v rounds="$ROUNDS" -v conns="$CONNECTIONS" -v inflight="$INFLIGHT" -v size="$SIZE" \
    -v dur="$DURATION" -v targets="$TARGETS" -v baseline="${BASELINE:-}" "$AWK_MEDIAN"'
{
    t = $1; n[t]++
    tp[t, n[t]] = $3; p50[t, n[t]] = $4; p99[t, n[t]] = $5
    msgs[t] += $6; errs[t] += $7; cpu[t] += $8
    if ($9 > rss[t]) rss[t] = $9
    printf "run %s round %d: %9.0f msg/s  p50 %7.0f us  p99 %7.0f us  errors %d\n", $1, $2, $3, $4, $5, $7
}
END {
    name["a"] = "(a) direct to the broker"
    name["b"] = "(b) through the sidecar"
    name["c"] = "(c) through haproxy (tcp)"
    name["p"] = "(p) baseline sidecar"
    printf "\nsend, %d B bodies, %d connections x %d in flight, %d s per run, median of %d runs\n\n", size, conns, inflight, dur, rounds
    printf "%-28s %12s %10s %10s %8s %16s %10s\n", "target", "msg/s", "p50 us", "p99 us", "errors", "cpu-s/100k msg", "rss MiB"
    nt = split(targets, ts, " ")
    for (k = 1; k <= nt; k++) {
        t = ts[k]
        for (i = 1; i <= n[t]; i++) { x[i] = tp[t, i] }; T[t] = median(x, n[t])
        for (i = 1; i <= n[t]; i++) { x[i] = p50[t, i] }; P50[t] = median(x, n[t])
        for (i = 1; i <= n[t]; i++) { x[i] = p99[t, i] }; P99[t] = median(x, n[t])
        c = (t == "a") ? "-" : sprintf("%.2f", cpu[t] / msgs[t] * 100000)
        r = (t == "a") ? "-" : sprintf("%.1f", rss[t] / 1024)
        printf "%-28s %12.0f %10.0f %10.0f %8d %16s %10s\n", name[t], T[t], P50[t], P99[t], errs[t], c, r
    }
    printf "\nratios            throughput   p99\n"
    printf "b/a (vs direct)   %10.3f %6.3f\n", T["b"] / T["a"], P99["b"] / P99["a"]
    printf "b/c (vs haproxy)  %10.3f %6.3f\n", T["b"] / T["c"], P99["b"] / P99["c"]
    if (baseline != "") {
        printf "p/c (baseline)    %10.3f %6.3f\n", T["p"] / T["c"], P99["p"] / P99["c"]
        printf "b/p (vs baseline) %10.3f %6.3f   cpu-s/100k b/p %.3f\n", T["b"] / T["p"], P99["b"] / P99["p"], (cpu["b"] / msgs["b"]) / (cpu["p"] / msgs["p"])
        printf "baseline: %s\n", baseline
    }
    printf "\ntarget: b/c throughput >= 0.9 (%s), b/c p99 <= 1.3 (%s)\n", \
        (T["b"] / T["c"] >= 0.9) ? "met" : "NOT met", (P99["b"] / P99["c"] <= 1.3) ? "met" : "NOT met"
    printf "cpu-s/100k msg: CPU seconds (user+system) the proxy process used per 100,000 messages;\n"
    printf "rss: the proxy process resident set after its runs (largest seen).\n"
}' "$RESULTS"
