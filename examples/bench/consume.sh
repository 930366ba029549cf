#!/usr/bin/env bash
# Legacy (4.x push) consumer throughput: the same pull loop (a) directly against the broker and
# (b) through the sidecar, which turns every PULL into a POP and every offset commit into ACKs.
# Same machine, same run, same pre-filled topic. See examples/bench/README.md.
#
#   examples/bench/consume.sh
#
# Settings (environment): MESSAGES (pre-filled and consumed per run, 200000), SIZE (1024),
#   ROUNDS (a,b repeated, 3), CONNECTIONS (consumer connections, 2), SIDECAR_WORKERS (1),
#   VERIFY (1: after the runs, wait out the invisible time and check nothing is left un-acked),
#   CARGO_TARGET_DIR (target), BASELINE (another rocketmesh binary: its sidecar runs beside ours
#   as target p, b/p reported).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
MESSAGES="${MESSAGES:-200000}"
SIZE="${SIZE:-1024}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-2}"
VERIFY="${VERIFY:-1}"
# The sidecar's pop invisible time (TranslatorConfig::invisible_time_ms) plus the broker's revive
# tick and some slack.
INVISIBLE_WAIT="${INVISIBLE_WAIT:-65}"
TOPIC="BenchConsume"

WORK="$(mktemp -d -t rocketmesh-consume.XXXXXX)"
# shellcheck source=examples/bench/lib.sh
. "$ROOT/examples/bench/lib.sh"

log "control plane, broker, sidecar"
ADMIN="127.0.0.1:$(free_port)"
SIDECAR_FLAGS="--admin $ADMIN" start_mesh
start_baseline
TARGETS="a b"
[ -n "${BASELINE:-}" ] && TARGETS="a b p"


# ----- pre-fill -----

log "pre-filling $TOPIC with $MESSAGES messages of $SIZE B (direct sends)"
fill="$("$BIN" bench --target "$BROKER" --mode send --topic "$TOPIC" --size "$SIZE" \
    --connections 4 --inflight 16 --duration 600 --messages "$MESSAGES" --json | tail -n 1)"
log "pre-fill: $(field "$fill" messages) messages, $(field "$fill" msg_per_sec) msg/s, errors $(field "$fill" errors)"
if [ "$(field "$fill" errors)" != "0" ]; then
    echo "the pre-fill had errors: $fill" >&2
    exit 1
fi
# Sends in flight when the count was reached land too: every run consumes exactly what is stored.
MESSAGES="$(field "$fill" messages)"
# The sidecar learns the topic's route over xDS once the broker re-registers it: a short consume
# through it (its own group, committed and acked at its end) must succeed before the runs.
for sc in "$SIDECAR" ${BASE_SIDECAR:-}; do
  for i in $(seq 50); do
    "$BIN" bench --target "$sc" --mode consume --topic "$TOPIC" --group rocketmesh_probe \
        --connections 1 --duration 2 --messages 1 >"$WORK/probe.out" 2>&1 && break
    [ "$i" = 50 ] && { echo "the sidecar at $sc cannot consume $TOPIC:" >&2; cat "$WORK/probe.out" >&2; exit 1; }
    sleep 0.2
  done
done

# ----- runs -----

# consume TARGET GROUP: one run; prints its JSON line.
consume() {
    "$BIN" bench --target "$1" --mode consume --topic "$TOPIC" --group "$2" \
        --connections "$CONNECTIONS" --messages "$MESSAGES" --duration 600 --json | tail -n 1
}

RESULTS="$WORK/results"
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
    for t in $TARGETS; do
        case $t in
        a) target="$BROKER" group="G1_$round" pid="$PID_SIDECAR" ;;
        b) target="$SIDECAR" group="G2_$round" pid="$PID_SIDECAR" ;;
        p) target="$BASE_SIDECAR" group="G3_$round" pid="$PID_BASE" ;;
        esac
        log "round $round/$ROUNDS: $t -> $target, group $group, $MESSAGES messages"
        s0="$(cpu_ticks "$pid")"
        b0="$(cpu_ticks "$PID_BROKER")"
        j="$(consume "$target" "$group")"
        scpu="$(awk -v a="$s0" -v b="$(cpu_ticks "$pid")" -v t="$TCK" 'BEGIN { print (b - a) / t }')"
        bcpu="$(awk -v a="$b0" -v b="$(cpu_ticks "$PID_BROKER")" -v t="$TCK" 'BEGIN { print (b - a) / t }')"
        [ "$t" = a ] && scpu=0
        echo "$t $round $(field "$j" msg_per_sec) $(field "$j" p50_us) $(field "$j" p99_us) \
$(field "$j" messages) $(field "$j" errors) $scpu $bcpu $(field "$j" seconds)" >>"$RESULTS"
    done
done

# ----- report -----

awk -v rounds="$ROUNDS" -v conns="$CONNECTIONS" -v size="$SIZE" -v msgs="$MESSAGES" \
    -v targets="$TARGETS" -v baseline="${BASELINE:-}" "$AWK_MEDIAN"'
{
    t = $1; n[t]++
    tp[t, n[t]] = $3; p50[t, n[t]] = $4; p99[t, n[t]] = $5
    m[t] += $6; errs[t] += $7; scpu[t] += $8; bcpu[t] += $9
    printf "run %s round %d: %9.0f msg/s  %7d msgs in %6.2f s  pull p50 %7.0f us  p99 %7.0f us  errors %d\n", $1, $2, $3, $6, $10, $4, $5, $7
}
END {
    name["a"] = "(a) direct to the broker"
    name["b"] = "(b) through the sidecar"
    name["p"] = "(p) baseline sidecar"
    printf "\nconsume (4.x pull loop), %d messages of %d B per run, %d connections, median of %d runs\n\n", msgs, size, conns, rounds
    printf "%-26s %10s %12s %12s %8s %18s %18s\n", "target", "msg/s", "pull p50 us", "pull p99 us", "errors", "sidecar cpu-s/100k", "broker cpu-s/100k"
    nt = split(targets, ts, " ")
    for (k = 1; k <= nt; k++) {
        t = ts[k]
        for (i = 1; i <= n[t]; i++) { x[i] = tp[t, i] }; T[t] = median(x, n[t])
        for (i = 1; i <= n[t]; i++) { x[i] = p50[t, i] }; P50[t] = median(x, n[t])
        for (i = 1; i <= n[t]; i++) { x[i] = p99[t, i] }; P99[t] = median(x, n[t])
        s = (t == "a") ? "-" : sprintf("%.2f", scpu[t] / m[t] * 100000)
        printf "%-26s %10.0f %12.0f %12.0f %8d %18s %18.2f\n", name[t], T[t], P50[t], P99[t], errs[t], s, bcpu[t] / m[t] * 100000
    }
    printf "\nratio b/a (throughput): %.3f   target >= 0.8: %s\n", T["b"] / T["a"], (T["b"] / T["a"] >= 0.8) ? "met" : "NOT met"
    if (baseline != "") {
        printf "ratio p/a (baseline):   %.3f\n", T["p"] / T["a"]
        printf "ratio b/p (throughput): %.3f   sidecar cpu-s/100k b/p: %.3f\n", T["b"] / T["p"], (scpu["b"] / m["b"]) / (scpu["p"] / m["p"])
        printf "baseline: %s\n", baseline
    }
}' "$RESULTS"

stats() { curl -s "http://$ADMIN/stats/prometheus" | grep -E "^rocketmq_[a-z_]*_(pull_converted|acks_from_commits|outstanding_handles|renewals)[ {]" || true; }
echo
echo "sidecar translator counters:"
stats | sed 's/^/  /'

# ----- every message consumed through the sidecar was acked -----

if [ "$VERIFY" = 1 ]; then
    log "waiting ${INVISIBLE_WAIT}s (the sidecar's pop invisible time) before checking for un-acked messages"
    sleep "$INVISIBLE_WAIT"
    bad=0
    for round in $(seq "$ROUNDS"); do
      for g in G2 ${BASELINE:+G3}; do
        # A POP with the group after the invisible time returns whatever was popped and never
        # acked (revived into the group's retry topic) and anything never popped: it must be empty.
        j="$("$BIN" bench --target "$BROKER" --mode pop --topic "$TOPIC" --group "${g}_$round" \
            --connections 1 --inflight 1 --duration 2 --json | tail -n 1)"
        left="$(field "$j" messages)"
        echo "${g}_$round: a POP after the invisible time returned $left messages (must be 0)"
        [ "$left" = 0 ] || bad=1
      done
    done
    if [ "$bad" = 1 ]; then
        echo "FAILED: messages consumed through the sidecar were not all acked" >&2
        exit 1
    fi
    echo "every message consumed through the sidecar was acked"
fi
