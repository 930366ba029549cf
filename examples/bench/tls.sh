#!/usr/bin/env bash
# What TLS costs: the sidecar with TLS on the sidecar -> broker leg, and on both legs, against
# the same sidecar in plaintext; then the new-connection (handshake) rate of a permissive
# listener. `rocketmesh bench` 1 KiB sync sends, same machine, same run, interleaved rounds.
#
#   examples/bench/tls.sh
#
# Settings (environment): DURATION (s per run, 10), ROUNDS (3), SIDECAR_WORKERS (1),
#   CONNECTIONS (4), INFLIGHT (16), SIZE (1024), WARMUP (3), HANDSHAKE_SECONDS (5),
#   CARGO_TARGET_DIR (target). Certificates are made with Debian's `openssl` (installed if
#   missing): a CA, the broker's (DNS broker.test, URI spiffe://bench/broker) and the
#   sidecar's (DNS sidecar.test, URI spiffe://bench/sidecar), P-256.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-4}"
INFLIGHT="${INFLIGHT:-16}"
SIZE="${SIZE:-1024}"
WARMUP="${WARMUP:-3}"
HANDSHAKE_SECONDS="${HANDSHAKE_SECONDS:-5}"
TOPIC="BenchTls"

WORK="$(mktemp -d -t rocketmesh-tls.XXXXXX)"
# shellcheck source=examples/bench/lib.sh
. "$ROOT/examples/bench/lib.sh"

if ! command -v openssl >/dev/null; then
    log "installing openssl"
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then SUDO=(sudo); fi
    "${SUDO[@]}" apt-get install -y openssl >/dev/null ||
        { "${SUDO[@]}" apt-get update >/dev/null && "${SUDO[@]}" apt-get install -y openssl >/dev/null; }
fi

log "certificates"
PKI="$WORK/pki"
mkdir -p "$PKI"
ec() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "$@" 2>/dev/null; }
ec -x509 -days 2 -subj /CN=bench-ca -keyout "$PKI/ca.key" -out "$PKI/ca.pem"
leaf() { # leaf NAME SAN
    ec -subj "/CN=$1" -keyout "$PKI/$1.key" -out "$PKI/$1.csr"
    openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" -CAcreateserial \
        -days 2 -out "$PKI/$1.pem" -extfile <(printf 'subjectAltName=%s\n' "$2") 2>/dev/null
}
leaf broker "DNS:broker.test,URI:spiffe://bench/broker"
leaf sidecar "DNS:sidecar.test,URI:spiffe://bench/sidecar"

log "control plane, broker (permissive TLS, optional client certificates), three sidecars"
BROKER_FLAGS="--tls-mode permissive --tls-cert $PKI/broker.pem --tls-key $PKI/broker.key \
--tls-client-auth optional --tls-client-ca $PKI/ca.pem" start_mesh
UPSTREAM="--upstream-tls-ca $PKI/ca.pem --upstream-tls-cert $PKI/sidecar.pem \
--upstream-tls-key $PKI/sidecar.key --upstream-tls-identities spiffe://bench/broker"
# shellcheck disable=SC2086 # flag lists
start sidecar-u "$BIN" sidecar --xds "$CP_XDS" --listen 127.0.0.1:0 --vip-channel false \
    --admin 127.0.0.1:0 --workers "${SIDECAR_WORKERS:-1}" $UPSTREAM
SIDECAR_U="$READY" PID_U="$LAST_PID"
# shellcheck disable=SC2086
start sidecar-t "$BIN" sidecar --xds "$CP_XDS" --listen 127.0.0.1:0 --vip-channel false \
    --admin 127.0.0.1:0 --workers "${SIDECAR_WORKERS:-1}" $UPSTREAM \
    --tls-mode enforcing --tls-cert "$PKI/sidecar.pem" --tls-key "$PKI/sidecar.key"
SIDECAR_T="$READY" PID_T="$LAST_PID"

# bench_tls TARGET SECONDS [FLAGS]: as lib.sh's bench, with extra flags (TLS).
bench_tls() {
    local target="$1" secs="$2"
    shift 2
    "$BIN" bench --target "$target" --mode send --topic "$TOPIC" --size "$SIZE" \
        --connections "$CONNECTIONS" --inflight "$INFLIGHT" --duration "$secs" --json "$@" | tail -n 1
}
SDK_TLS=(--tls-ca "$PKI/ca.pem" --tls-sni sidecar.test)

log "warm-up: ${WARMUP}s on each target"
bench "$BROKER" "$WARMUP" >/dev/null
for t in "$SIDECAR" "$SIDECAR_U"; do bench "$t" "$WARMUP" >/dev/null; done
bench_tls "$SIDECAR_T" "$WARMUP" "${SDK_TLS[@]}" >/dev/null
for t in "$SIDECAR" "$SIDECAR_U"; do bench "$t" "$WARMUP" >/dev/null; done
bench_tls "$SIDECAR_T" "$WARMUP" "${SDK_TLS[@]}" >/dev/null

RESULTS="$WORK/results"
: >"$RESULTS"
TARGETS="p u t"
for round in $(seq "$ROUNDS"); do
    order="$TARGETS"
    if [ $((round % 2)) -eq 0 ]; then order="$(tr ' ' '\n' <<<"$TARGETS" | tac | tr '\n' ' ')"; fi
    for t in $order; do
        extra=()
        case $t in
        p) target="$SIDECAR" pid="$PID_SIDECAR" ;;
        u) target="$SIDECAR_U" pid="$PID_U" ;;
        t) target="$SIDECAR_T" pid="$PID_T" extra=("${SDK_TLS[@]}") ;;
        esac
        log "round $round/$ROUNDS: $t -> $target, ${DURATION}s"
        c0="$(cpu_ticks "$pid")"
        b0="$(cpu_ticks "$PID_BROKER")"
        j="$(bench_tls "$target" "$DURATION" "${extra[@]}")"
        cpu="$(awk -v a="$c0" -v b="$(cpu_ticks "$pid")" -v t="$TCK" 'BEGIN { print (b - a) / t }')"
        bcpu="$(awk -v a="$b0" -v b="$(cpu_ticks "$PID_BROKER")" -v t="$TCK" 'BEGIN { print (b - a) / t }')"
        echo "$t $round $(field "$j" msg_per_sec) $(field "$j" p99_us) $(field "$j" messages) \
$(field "$j" errors) $cpu $bcpu" >>"$RESULTS"
    done
done

awk -v rounds="$ROUNDS" -v size="$SIZE" -v conns="$CONNECTIONS" -v inflight="$INFLIGHT" \
    -v dur="$DURATION" "$AWK_MEDIAN"'
{
    t = $1; n[t]++; tp[t, n[t]] = $3; p99[t, n[t]] = $4
    msgs[t] += $5; errs[t] += $6; cpu[t] += $7; bcpu[t] += $8
    printf "run %s round %d: %9.0f msg/s  p99 %7.0f us  errors %d\n", $1, $2, $3, $4, $6
}
END {
    name["p"] = "(p) sidecar, plaintext"
    name["u"] = "(u) TLS sidecar->broker"
    name["t"] = "(t) TLS on both legs"
    printf "\nsend, %d B bodies, %d connections x %d in flight, %d s per run, median of %d runs\n\n", size, conns, inflight, dur, rounds
    printf "%-26s %10s %10s %8s %20s %20s\n", "target", "msg/s", "p99 us", "errors", "sidecar cpu-s/100k", "broker cpu-s/100k"
    split("p u t", ts, " ")
    for (k = 1; k <= 3; k++) {
        t = ts[k]
        for (i = 1; i <= n[t]; i++) { x[i] = tp[t, i] }; T[t] = median(x, n[t])
        for (i = 1; i <= n[t]; i++) { x[i] = p99[t, i] }; P[t] = median(x, n[t])
        C[t] = cpu[t] / msgs[t] * 100000; B[t] = bcpu[t] / msgs[t] * 100000
        printf "%-26s %10.0f %10.0f %8d %20.3f %20.3f\n", name[t], T[t], P[t], errs[t], C[t], B[t]
    }
    printf "\nratios vs (p)     throughput   p99   sidecar cpu/msg\n"
    printf "u/p (upstream)    %10.3f %6.3f %10.3f\n", T["u"] / T["p"], P["u"] / P["p"], C["u"] / C["p"]
    printf "t/p (both legs)   %10.3f %6.3f %10.3f\n", T["t"] / T["p"], P["t"] / P["p"], C["t"] / C["p"]
    printf "\ntarget: TLS adds at most 30%% sidecar CPU per message: u %s, t %s\n", \
        (C["u"] / C["p"] <= 1.3) ? "met" : "NOT met", (C["t"] / C["p"] <= 1.3) ? "met" : "NOT met"
}' "$RESULTS"

log "new connections per second on the broker's permissive port (${HANDSHAKE_SECONDS}s each)"
connect() {
    "$BIN" bench --target "$BROKER" --mode connect --connections "$CONNECTIONS" \
        --duration "$HANDSHAKE_SECONDS" --json "$@" | tail -n 1
}
printf '\n%-40s %12s %10s %10s\n' "connect + 1 request + close" "conn/s" "p50 us" "p99 us"
for kind in plaintext tls-resumed tls-full; do
    case $kind in
    plaintext) j="$(connect)" ;;
    tls-resumed) j="$(connect --tls-ca "$PKI/ca.pem" --tls-sni broker.test)" ;;
    tls-full) j="$(connect --tls-ca "$PKI/ca.pem" --tls-sni broker.test --tls-no-resumption)" ;;
    esac
    printf '%-40s %12.0f %10.0f %10.0f\n' "$kind" "$(field "$j" msg_per_sec)" \
        "$(field "$j" p50_us)" "$(field "$j" p99_us)"
done
