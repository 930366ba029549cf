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
#   BASELINE (another rocketmesh binary: its sidecar runs beside ours as target p, b/p reported),
#   SYNC (1: also (s), direct sends to a second broker with --flush sync, and the disk's fsync
#   latency measured in the same run).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DURATION="${DURATION:-15}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-4}"
INFLIGHT="${INFLIGHT:-16}"
SIZE="${SIZE:-1024}"
WARMUP="${WARMUP:-3}"
SYNC="${SYNC:-1}"
TOPIC="BenchCompare"

WORK="$(mktemp -d -t rocketmesh-compare.XXXXXX)"
# shellcheck source=examples/bench/lib.sh
. "$ROOT/examples/bench/lib.sh"

log "control plane, broker, sidecar, haproxy"
SIDECAR_FLAGS="--admin 127.0.0.1:0" start_mesh
start_baseline
start_haproxy "$BROKER"
TARGETS="a b c"
[ -n "${BASELINE:-}" ] && TARGETS="a b p c"
# (s): a second broker, fsyncing before it answers (--flush sync, group commit), on the same disk.
if [ "$SYNC" = 1 ]; then
    start broker-sync "$BIN" broker --listen 127.0.0.1:0 --data-dir "$WORK/broker-sync-data" \
        --name broker-s --flush sync
    SYNC_BROKER="$READY"
    PID_SYNC="$LAST_PID"
    TARGETS="$TARGETS s"
fi

# ----- runs -----

# The first sends (direct) create the topic; the broker re-registers it, and the sidecar learns
# its route over xDS on its first request.
log "warm-up: ${WARMUP}s on each target"
for t in "$BROKER" "$SIDECAR" ${BASE_SIDECAR:-} "$HAPROXY" ${SYNC_BROKER:-}; do
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
        s) target="$SYNC_BROKER" pid="" ;;
        b) target="$SIDECAR" pid="$PID_SIDECAR" ;;
        c) target="$HAPROXY" pid="$PID_HAPROXY" ;;
        p) target="$BASE_SIDECAR" pid="$PID_BASE" ;;
        esac
        log "round $round/$ROUNDS: $t -> $target, ${DURATION}s"
        c0=0
        [ -n "$pid" ] && c0="$(cpu_ticks "$pid")"
        bpid="$PID_BROKER"
        [ "$t" = s ] && bpid="$PID_SYNC"
        k0="$(cpu_ticks "$bpid")"
        j="$(bench "$target" "$DURATION")"
        bcpu="$(awk -v a="$k0" -v b="$(cpu_ticks "$bpid")" -v t="$TCK" 'BEGIN { print (b - a) / t }')"
        cpu=0 rss=0
        if [ -n "$pid" ]; then
            cpu="$(awk -v a="$c0" -v b="$(cpu_ticks "$pid")" -v t="$TCK" 'BEGIN { print (b - a) / t }')"
            rss="$(rss_kb "$pid")"
        fi
        echo "$t $round $(field "$j" msg_per_sec) $(field "$j" p50_us) $(field "$j" p99_us) \
$(field "$j" messages) $(field "$j" errors) $cpu $rss $bcpu" >>"$RESULTS"
    done
done
FSYNC_US=0
if [ "$SYNC" = 1 ]; then
    FSYNC_US="$(fsync_us "$WORK/broker-sync-data")"
fi

# ----- report -----

awk -v rounds="$ROUNDS" -v conns="$CONNECTIONS" -v inflight="$INFLIGHT" -v size="$SIZE" \
    -v dur="$DURATION" -v targets="$TARGETS" -v baseline="${BASELINE:-}" -v fsync="$FSYNC_US" "$AWK_MEDIAN"'
{
    t = $1; n[t]++
    tp[t, n[t]] = $3; p50[t, n[t]] = $4; p99[t, n[t]] = $5
    msgs[t] += $6; errs[t] += $7; cpu[t] += $8; bcpu[t] += $10
    if ($9 > rss[t]) rss[t] = $9
    printf "run %s round %d: %9.0f msg/s  p50 %7.0f us  p99 %7.0f us  errors %d\n", $1, $2, $3, $4, $5, $7
}
END {
    name["a"] = "(a) direct to the broker"
    name["b"] = "(b) through the sidecar"
    name["c"] = "(c) through haproxy (tcp)"
    name["p"] = "(p) baseline sidecar"
    name["s"] = "(s) direct, sync-flush broker"
    printf "\nsend, %d B bodies, %d connections x %d in flight, %d s per run, median of %d runs\n\n", size, conns, inflight, dur, rounds
    printf "%-30s %10s %8s %8s %7s %16s %8s %14s\n", "target", "msg/s", "p50 us", "p99 us", "errors", "cpu-s/100k msg", "rss MiB", "broker cpu-s"
    nt = split(targets, ts, " ")
    for (k = 1; k <= nt; k++) {
        t = ts[k]
        for (i = 1; i <= n[t]; i++) { x[i] = tp[t, i] }; T[t] = median(x, n[t])
        for (i = 1; i <= n[t]; i++) { x[i] = p50[t, i] }; P50[t] = median(x, n[t])
        for (i = 1; i <= n[t]; i++) { x[i] = p99[t, i] }; P99[t] = median(x, n[t])
        c = (t == "a" || t == "s") ? "-" : sprintf("%.2f", cpu[t] / msgs[t] * 100000)
        r = (t == "a" || t == "s") ? "-" : sprintf("%.1f", rss[t] / 1024)
        printf "%-30s %10.0f %8.0f %8.0f %7d %16s %8s %14.2f\n", name[t], T[t], P50[t], P99[t], errs[t], c, r, bcpu[t] / msgs[t] * 100000
    }
    printf "\nratios            throughput   p99\n"
    printf "b/a (vs direct)   %10.3f %6.3f\n", T["b"] / T["a"], P99["b"] / P99["a"]
    printf "b/c (vs haproxy)  %10.3f %6.3f\n", T["b"] / T["c"], P99["b"] / P99["c"]
    if (baseline != "") {
        printf "p/c (baseline)    %10.3f %6.3f\n", T["p"] / T["c"], P99["p"] / P99["c"]
        printf "b/p (vs baseline) %10.3f %6.3f   cpu-s/100k b/p %.3f\n", T["b"] / T["p"], P99["b"] / P99["p"], (cpu["b"] / msgs["b"]) / (cpu["p"] / msgs["p"])
        printf "baseline: %s\n", baseline
    }
    cb = cpu["b"] / msgs["b"]; cc = cpu["c"] / msgs["c"]
    printf "cpu-s/100k b/c    %10.3f\n", cb / cc
    printf "\ntargets: b/c throughput >= 1.0 (%s), b/c p99 <= 1.0 (%s), sidecar cpu <= haproxy cpu (%s)\n", \
        (T["b"] / T["c"] >= 1.0) ? "met" : "NOT met", (P99["b"] / P99["c"] <= 1.0) ? "met" : "NOT met", (cb <= cc) ? "met" : "NOT met"
    ab = bcpu["a"] / msgs["a"] * 100000
    printf "broker, async flush: %.2f cpu-s/100k msg (direct runs; target <= 0.5): %s\n", ab, (ab <= 0.5) ? "met" : "NOT met"
    if (n["s"] > 0) {
        bound = conns * inflight / (fsync / 1e6)
        printf "broker, sync flush: %.0f msg/s (s/a %.3f, p99 s/a %.3f); fsync of 64 KiB on this disk %d us:\n", T["s"], T["s"] / T["a"], P99["s"] / P99["a"], fsync
        printf "  group commit bound = %d in flight / fsync = %.0f msg/s; s / min(bound, a) = %.3f (target >= 0.9)\n", conns * inflight, bound, T["s"] / ((bound < T["a"]) ? bound : T["a"])
    }
    printf "broker cpu-s: the broker process CPU per 100,000 messages in that target'"'"'s runs.\n"
    printf "cpu-s/100k msg: CPU seconds (user+system) the proxy process used per 100,000 messages;\n"
    printf "rss: the proxy process resident set after its runs (largest seen).\n"
}' "$RESULTS"
