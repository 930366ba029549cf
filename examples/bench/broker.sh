#!/usr/bin/env bash
# The broker's send path alone: 1 KiB sync sends (`rocketmesh bench --mode send`) straight to a
# broker with async flush (a) and to one with --flush sync (s), broker CPU per 100k messages, and
# the disk's fsync latency measured in the same run (what group commit allows: in-flight
# requests / fsync latency). With BASELINE, the same two brokers from an earlier build run
# beside them (targets pa, ps), interleaved. See examples/bench/README.md.
#
#   examples/bench/broker.sh
#   BASELINE=/path/to/old/rocketmesh examples/bench/broker.sh
#
# Settings (environment): DURATION (s per run, 10), ROUNDS (3), CONNECTIONS (4), INFLIGHT (16),
#   SIZE (1024), BASELINE, CARGO_TARGET_DIR.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-4}"
INFLIGHT="${INFLIGHT:-16}"
SIZE="${SIZE:-1024}"
TOPIC="BenchBroker"

WORK="$(mktemp -d -t rocketmesh-broker.XXXXXX)"
# shellcheck source=examples/bench/lib.sh
. "$ROOT/examples/bench/lib.sh"

declare -A ADDR PID
# start_broker NAME BINARY FLAGS...
start_broker() {
    local name="$1" bin="$2"
    shift 2
    start "broker-$name" "$bin" broker --listen 127.0.0.1:0 --data-dir "$WORK/data-$name" \
        --name "broker-$name" "$@"
    ADDR[$name]="$READY"
    PID[$name]="$LAST_PID"
}
log "brokers"
start_broker a "$BIN"
start_broker s "$BIN" --flush sync
TARGETS="a s"
if [ -n "${BASELINE:-}" ]; then
    [ -x "$BASELINE" ] || { echo "BASELINE=$BASELINE is not an executable" >&2; exit 1; }
    start_broker pa "$BASELINE"
    start_broker ps "$BASELINE" --flush sync
    TARGETS="a pa s ps"
fi
for t in $TARGETS; do
    bench "${ADDR[$t]}" 2 >/dev/null # creates the topic
done

# The disk's fsync latency, before the runs fill it.
FSYNC_US="$(fsync_us "$WORK/data-s")"
RESULTS="$WORK/results"
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
    order="$TARGETS"
    if [ $((round % 2)) -eq 0 ]; then order="$(tr ' ' '\n' <<<"$TARGETS" | tac | tr '\n' ' ')"; fi
    for t in $order; do
        log "round $round/$ROUNDS: $t, ${DURATION}s"
        c0="$(cpu_ticks "${PID[$t]}")"
        probe=""
        if [ "$t" = s ]; then
            # The fsync latency while the sync broker runs, on its disk: what its group
            # commits meet.
            (sleep 2 && fsync_us "$WORK/data-s" >"$WORK/fsync-$round") &
            probe=$!
        fi
        j="$(bench "${ADDR[$t]}" "$DURATION")"
        [ -n "$probe" ] && wait "$probe"
        cpu="$(awk -v a="$c0" -v b="$(cpu_ticks "${PID[$t]}")" -v t="$TCK" 'BEGIN { print (b - a) / t }')"
        echo "$t $round $(field "$j" msg_per_sec) $(field "$j" p50_us) $(field "$j" p99_us) \
$(field "$j" messages) $(field "$j" errors) $cpu" >>"$RESULTS"
    done
done

FSYNC_LOADED="$(cat "$WORK"/fsync-* | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')"
awk -v targets="$TARGETS" -v inflight="$((CONNECTIONS * INFLIGHT))" -v fsync="$FSYNC_LOADED" \
    -v fsync_idle="$FSYNC_US" \
    -v rounds="$ROUNDS" -v dur="$DURATION" "$AWK_MEDIAN"'
{
    t = $1; n[t]++
    tp[t, n[t]] = $3; p50[t, n[t]] = $4; p99[t, n[t]] = $5
    msgs[t] += $6; errs[t] += $7; cpu[t] += $8
    printf "run %-2s round %d: %9.0f msg/s  p50 %7.0f us  p99 %7.0f us  errors %d\n", $1, $2, $3, $4, $5, $7
}
END {
    name["a"] = "(a) async flush"; name["s"] = "(s) sync flush"
    name["pa"] = "(pa) baseline, async flush"; name["ps"] = "(ps) baseline, sync flush"
    printf "\nsend straight to the broker, %d in flight, %d s per run, median of %d runs\n\n", inflight, dur, rounds
    printf "%-28s %10s %8s %8s %7s %18s\n", "target", "msg/s", "p50 us", "p99 us", "errors", "broker cpu-s/100k"
    nt = split(targets, ts, " ")
    for (k = 1; k <= nt; k++) {
        t = ts[k]
        for (i = 1; i <= n[t]; i++) { x[i] = tp[t, i] }; T[t] = median(x, n[t])
        for (i = 1; i <= n[t]; i++) { x[i] = p50[t, i] }; P50[t] = median(x, n[t])
        for (i = 1; i <= n[t]; i++) { x[i] = p99[t, i] }; P99[t] = median(x, n[t])
        C[t] = cpu[t] / msgs[t] * 100000
        printf "%-28s %10.0f %8.0f %8.0f %7d %18.3f\n", name[t], T[t], P50[t], P99[t], errs[t], C[t]
    }
    bound = inflight / (fsync / 1e6)
    printf "\nfsync of 64 KiB on this disk: %d us idle, %d us during the (s) runs (median);\n", fsync_idle, fsync
    printf "group commit bound = %d in flight / fsync during (s) = %.0f msg/s\n", inflight, bound
    lim = (bound < T["a"]) ? bound : T["a"]
    printf "sync flush: s / min(bound, a) = %.3f (target >= 0.9: %s); s/a throughput %.3f, p99 %.3f\n", T["s"] / lim, (T["s"] / lim >= 0.9) ? "met" : "NOT met", T["s"] / T["a"], P99["s"] / P99["a"]
    printf "async flush: %.3f broker cpu-s/100k (target <= 0.5: %s)\n", C["a"], (C["a"] <= 0.5) ? "met" : "NOT met"
    if (n["pa"] > 0) {
        printf "vs baseline: async a/pa throughput %.3f, p99 %.3f, cpu %.3f; sync s/ps throughput %.3f, p99 %.3f, cpu %.3f\n", \
            T["a"] / T["pa"], P99["a"] / P99["pa"], C["a"] / C["pa"], T["s"] / T["ps"], P99["s"] / P99["ps"], C["s"] / C["ps"]
    }
}' "$RESULTS"
