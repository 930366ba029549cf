#!/usr/bin/env bash
# Legacy (4.x push) consumer throughput: the same pull loop (a) directly against the broker,
# (b) through the sidecar, which turns every PULL into a POP and every offset commit into ACKs,
# and (c) through HAProxy (an L4 hop, no translation); and (d) a native Pop consumer straight to
# the broker (one BATCH_ACK_MESSAGE per pop). Same machine, same run, same pre-filled topic.
# See examples/bench/README.md.
#
#   examples/bench/consume.sh
#
# Settings (environment): MESSAGES (pre-filled, 1000000), SIZE (1024), MIN_SECONDS (a run reads
#   the whole topic with fresh groups, pass after pass, until its passes add up to this, 10),
#   ROUNDS (a,b,c,d repeated, 3), CONNECTIONS (consumer connections, 2; (d) pops with 2 in
#   flight on each), SIDECAR_WORKERS (1),
#   VERIFY (1: after the runs, wait out the invisible time and check nothing is left un-acked),
#   CARGO_TARGET_DIR (target), BASELINE (another rocketmesh binary: its sidecar runs beside ours
#   as target p, b/p reported).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
MESSAGES="${MESSAGES:-1000000}"
MIN_SECONDS="${MIN_SECONDS:-10}"
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

log "control plane, broker, sidecar, haproxy"
ADMIN="127.0.0.1:$(free_port)"
SIDECAR_FLAGS="--admin $ADMIN" start_mesh
start_baseline
start_haproxy "$BROKER"
TARGETS="a b c d"
[ -n "${BASELINE:-}" ] && TARGETS="a b p c d"


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

# consume TARGET GROUP: one pass of the pull loop over the whole topic; prints its JSON line.
consume() {
    "$BIN" bench --target "$1" --mode consume --topic "$TOPIC" --group "$2" \
        --connections "$CONNECTIONS" --messages "$MESSAGES" --duration 600 --json | tail -n 1
}
# pop_consume GROUP: one pass of a native Pop consumer (batch acks) over the whole topic.
pop_consume() {
    "$BIN" bench --target "$BROKER" --mode pop --ack batch --topic "$TOPIC" --group "$1" \
        --connections "$CONNECTIONS" --inflight 2 --messages "$MESSAGES" --duration 600 \
        --json | tail -n 1
}

RESULTS="$WORK/results"
SIDECAR_GROUPS="$WORK/sidecar-groups"
: >"$RESULTS"
: >"$SIDECAR_GROUPS"
for round in $(seq "$ROUNDS"); do
    order="$TARGETS"
    if [ $((round % 2)) -eq 0 ]; then order="$(tr ' ' '\n' <<<"$TARGETS" | tac | tr '\n' ' ')"; fi
    for t in $order; do
        case $t in
        a) target="$BROKER" pid="" ;;
        b) target="$SIDECAR" pid="$PID_SIDECAR" ;;
        c) target="$HAPROXY" pid="$PID_HAPROXY" ;;
        d) target="$BROKER" pid="" ;;
        p) target="$BASE_SIDECAR" pid="$PID_BASE" ;;
        esac
        log "round $round/$ROUNDS: $t -> $target, passes of $MESSAGES messages for ${MIN_SECONDS}s"
        s0=0
        [ -n "$pid" ] && s0="$(cpu_ticks "$pid")"
        b0="$(cpu_ticks "$PID_BROKER")"
        pass=0 msgs=0 secs=0 errs=0 p50s="" p99s=""
        while awk -v s="$secs" -v m="$MIN_SECONDS" 'BEGIN { exit !(s < m) }'; do
            pass=$((pass + 1))
            group="G${t}_${round}_$pass"
            if [ "$t" = d ]; then
                j="$(pop_consume "$group")"
            else
                j="$(consume "$target" "$group")"
            fi
            case $t in b | p) echo "$group" >>"$SIDECAR_GROUPS" ;; esac
            got="$(field "$j" messages)"
            if [ -z "$got" ] || [ "$got" -lt "$MESSAGES" ]; then
                echo "run $t $group read ${got:-no} messages of $MESSAGES: $j" >&2
                exit 1
            fi
            msgs=$((msgs + got))
            errs=$((errs + $(field "$j" errors)))
            secs="$(awk -v a="$secs" -v b="$(field "$j" seconds)" 'BEGIN { print a + b }')"
            p50s="$p50s $(field "$j" p50_us)"
            p99s="$p99s $(field "$j" p99_us)"
        done
        scpu=0
        [ -n "$pid" ] && scpu="$(awk -v a="$s0" -v b="$(cpu_ticks "$pid")" -v t="$TCK" 'BEGIN { print (b - a) / t }')"
        bcpu="$(awk -v a="$b0" -v b="$(cpu_ticks "$PID_BROKER")" -v t="$TCK" 'BEGIN { print (b - a) / t }')"
        # The pass latencies' median stands for the run.
        p50="$(tr ' ' '\n' <<<"$p50s" | sed '/^$/d' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')"
        p99="$(tr ' ' '\n' <<<"$p99s" | sed '/^$/d' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')"
        echo "$t $round $(awk -v m="$msgs" -v s="$secs" 'BEGIN { print m / s }') $p50 $p99 \
$msgs $errs $scpu $bcpu $secs $pass" >>"$RESULTS"
    done
done

# ----- report -----

awk -v rounds="$ROUNDS" -v conns="$CONNECTIONS" -v size="$SIZE" -v msgs="$MESSAGES" \
    -v targets="$TARGETS" -v baseline="${BASELINE:-}" "$AWK_MEDIAN"'
{
    t = $1; n[t]++
    tp[t, n[t]] = $3; p50[t, n[t]] = $4; p99[t, n[t]] = $5
    m[t] += $6; errs[t] += $7; scpu[t] += $8; bcpu[t] += $9
    printf "run %s round %d: %9.0f msg/s  %8d msgs in %6.2f s (%d passes)  p50 %7.0f us  p99 %7.0f us  errors %d\n", $1, $2, $3, $6, $10, $11, $4, $5, $7
}
END {
    name["a"] = "(a) pull, direct"
    name["b"] = "(b) pull->pop, sidecar"
    name["c"] = "(c) pull, haproxy"
    name["d"] = "(d) pop+batch ack, direct"
    name["p"] = "(p) pull->pop, baseline"
    printf "\nconsume, %d messages of %d B per pass, %d connections, median of %d runs\n\n", msgs, size, conns, rounds
    printf "%-27s %9s %8s %8s %7s %16s %16s\n", "target", "msg/s", "p50 us", "p99 us", "errors", "proxy cpu-s/100k", "broker cpu-s/100k"
    nt = split(targets, ts, " ")
    for (k = 1; k <= nt; k++) {
        t = ts[k]
        for (i = 1; i <= n[t]; i++) { x[i] = tp[t, i] }; T[t] = median(x, n[t])
        for (i = 1; i <= n[t]; i++) { x[i] = p50[t, i] }; P50[t] = median(x, n[t])
        for (i = 1; i <= n[t]; i++) { x[i] = p99[t, i] }; P99[t] = median(x, n[t])
        s = (t == "a" || t == "d") ? "-" : sprintf("%.2f", scpu[t] / m[t] * 100000)
        printf "%-27s %9.0f %8.0f %8.0f %7d %16s %16.2f\n", name[t], T[t], P50[t], P99[t], errs[t], s, bcpu[t] / m[t] * 100000
    }
    printf "\nratios (throughput)\n"
    printf "b/a (vs direct pull)       %.3f\n", T["b"] / T["a"]
    printf "b/c (vs pull via haproxy)  %.3f   target >= 0.8: %s\n", T["b"] / T["c"], (T["b"] / T["c"] >= 0.8) ? "met" : "NOT met"
    printf "b/d (vs native pop)        %.3f   target >= 1.0: %s\n", T["b"] / T["d"], (T["b"] / T["d"] >= 1.0) ? "met" : "NOT met"
    printf "proxy cpu-s/100k b/c       %.3f\n", (scpu["b"] / m["b"]) / (scpu["c"] / m["c"])
    printf "broker cpu-s/100k d/a      %.3f   (pop+batch ack vs pull; target <= 1.1: %s)\n", (bcpu["d"] / m["d"]) / (bcpu["a"] / m["a"]), ((bcpu["d"] / m["d"]) / (bcpu["a"] / m["a"]) <= 1.1) ? "met" : "NOT met"
    if (baseline != "") {
        printf "p/a (baseline)             %.3f\n", T["p"] / T["a"]
        printf "b/p (vs baseline)          %.3f   sidecar cpu-s/100k b/p: %.3f\n", T["b"] / T["p"], (scpu["b"] / m["b"]) / (scpu["p"] / m["p"])
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
    while read -r g; do
        # A POP with the group after the invisible time returns whatever was popped and never
        # acked (revived into the group's retry topic) and anything never popped: it must be empty.
        j="$("$BIN" bench --target "$BROKER" --mode pop --topic "$TOPIC" --group "$g" \
            --connections 1 --inflight 1 --duration 1 --json | tail -n 1)"
        left="$(field "$j" messages)"
        echo "$g: a POP after the invisible time returned $left messages (must be 0)"
        [ "$left" = 0 ] || bad=1
    done <"$SIDECAR_GROUPS"
    if [ "$bad" = 1 ]; then
        echo "FAILED: messages consumed through the sidecar were not all acked" >&2
        exit 1
    fi
    echo "every message consumed through the sidecar was acked"
fi
