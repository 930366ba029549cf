#!/usr/bin/env bash
# Sidecar memory: its resident set with CONNECTIONS idle client connections, and holding TOPICS
# topics' routes (learned over xDS), on a control plane + one broker + sidecar mesh. With
# BASELINE, the same figures for an earlier build's sidecar (a second mesh). See
# examples/bench/README.md.
#
#   examples/bench/memory.sh
#
# Settings (environment): CONNECTIONS (10000), TOPICS (1000), BASELINE, CARGO_TARGET_DIR.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CONNECTIONS="${CONNECTIONS:-10000}"
TOPICS="${TOPICS:-1000}"

WORK="$(mktemp -d -t rocketmesh-memory.XXXXXX)"
# shellcheck source=examples/bench/lib.sh
. "$ROOT/examples/bench/lib.sh"

# Each idle connection is one descriptor in this script's python and one in the sidecar.
ulimit -n "$((CONNECTIONS + 1024))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"

log "control plane, broker, sidecar"
SIDECAR_FLAGS="--admin 127.0.0.1:0" start_mesh
start_baseline

for t in b ${BASELINE:+p}; do
    case $t in
    b) target="$SIDECAR" pid="$PID_SIDECAR" name="sidecar" ;;
    p) target="$BASE_SIDECAR" pid="$PID_BASE" name="baseline sidecar ($BASELINE)" ;;
    esac
    log "$name: $CONNECTIONS idle connections, then $TOPICS topics"
    echo "$name:"
    python3 "$ROOT/examples/bench/sidecar_rss.py" "$target" "$pid" "$BROKER" "$CONNECTIONS" \
        "$TOPICS" | sed 's/^/  /'
    # The next sidecar's topics must be new ones: it learns them from scratch either way.
done
