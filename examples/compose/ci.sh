#!/usr/bin/env bash
# The Docker demo end to end, for CI (.ci/run) and by hand:
#   1. examples/docker/build-images.sh (no registry: a local Debian base, the host's binary);
#   2. `compose up -d` of examples/compose with the observe profile, as project rocketmesh-ci,
#      on free host ports;
#   3. waits (at most WAIT_SECONDS, default 300) for the app's `DONE produced=N consumed=N`;
#   4. checks what the sidecars counted: app's sidecar every send, both sidecars pulls turned
#      into pops and acks (the group shared the messages), through their published admin ports;
#      and that every connection from each pod to the cluster is the sidecar's (uid 10001);
#   5. checks Prometheus scrapes all five rocketmesh processes and answers every query of
#      examples/grafana/rocketmesh.json;
#   6. `compose down -v`. On failure it prints every container's logs first.
# Fails at once, saying so, when no Docker engine answers.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
project="${COMPOSE_PROJECT:-rocketmesh-ci}"
wait_seconds="${WAIT_SECONDS:-300}"
produce=100 # PRODUCE of the app service in docker-compose.yml
started=$SECONDS
checks=0
passed() {
  checks=$((checks + 1))
  echo "   ok: $*"
}

if ! docker info >/dev/null 2>&1; then
  echo "error: no Docker engine answers ('docker info' failed):" >&2
  docker info 2>&1 | tail -n 5 >&2 || true
  echo "the Docker demo test needs a running Docker daemon" >&2
  exit 1
fi
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null; then
  compose=(docker-compose)
else
  echo "error: neither 'docker compose' nor 'docker-compose' is installed" >&2
  exit 1
fi
echo "== engine $(docker version --format '{{.Server.Version}}'), compose: $("${compose[@]}" version --short 2>/dev/null || echo '?')"

"$root/examples/docker/build-images.sh"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
APP_ADMIN_PORT="$(free_port)"
APP2_ADMIN_PORT="$(free_port)"
PROMETHEUS_PORT="$(free_port)"
export APP_ADMIN_PORT APP2_ADMIN_PORT PROMETHEUS_PORT
dc() { "${compose[@]}" -p "$project" -f "$here/docker-compose.yml" --profile observe "$@"; }

finished=false
finish() {
  local rc=$?
  if ! $finished; then
    echo "== FAILED: the containers and their logs" >&2
    dc ps -a >&2 || true
    dc logs --no-color --tail 200 >&2 || true
  fi
  echo "== compose down -v"
  dc down -v --remove-orphans >/dev/null 2>&1 || true
  exit "$rc"
}
trap finish EXIT

echo "== compose up (project $project; admin ports app $APP_ADMIN_PORT, app2 $APP2_ADMIN_PORT, prometheus $PROMETHEUS_PORT)"
dc down -v --remove-orphans >/dev/null 2>&1 || true
up_started=$SECONDS
dc up -d

echo "== waiting for the app (at most ${wait_seconds}s)"
result=""
until [ -n "$result" ]; do
  result="$(dc logs --no-color app 2>/dev/null | grep -Eo '(DONE|FAILED) produced=.*' | head -n 1 || true)"
  if [ -z "$result" ]; then
    if [ $((SECONDS - up_started)) -ge "$wait_seconds" ]; then
      echo "error: no DONE line from the app within ${wait_seconds}s" >&2
      exit 1
    fi
    sleep 2
  fi
done
echo "   app: $result ($((SECONDS - up_started))s after compose up)"
case "$result" in
  "DONE produced=$produce consumed=$produce "*) passed "every message produced was consumed by the group" ;;
  *) echo "error: expected DONE produced=$produce consumed=$produce" >&2; exit 1 ;;
esac

# stat URL NAME...: the sum of the samples of the named metrics (python3: no curl needed).
stat() {
  python3 -c '
import sys, urllib.request
names = set(sys.argv[2:])
total = 0.0
for line in urllib.request.urlopen(sys.argv[1], timeout=10).read().decode().splitlines():
    if line.startswith("#") or " " not in line:
        continue
    key, value = line.rsplit(" ", 1)
    if key.split("{")[0] in names:
        total += float(value)
print(int(total))' "$@"
}
echo "== the sidecars' stats"
app_stats="http://127.0.0.1:$APP_ADMIN_PORT/stats/prometheus"
app2_stats="http://127.0.0.1:$APP2_ADMIN_PORT/stats/prometheus"
sends="$(stat "$app_stats" rocketmq_rocketmesh_send_message_v1 rocketmq_rocketmesh_send_message_v2 \
  rocketmq_rocketmesh_send_message_batch)"
pulls1="$(stat "$app_stats" rocketmq_rocketmesh_pull_converted)"
pulls2="$(stat "$app2_stats" rocketmq_rocketmesh_pull_converted)"
acks1="$(stat "$app_stats" rocketmq_rocketmesh_acks_from_commits)"
acks2="$(stat "$app2_stats" rocketmq_rocketmesh_acks_from_commits)"
nameserver="$(stat "$app_stats" rocketmq_rocketmesh_downstream_cx_transparent_nameserver)"
echo "   app's sidecar: $sends sends, $pulls1 pulls turned into pops, $acks1 acks from offset commits, $nameserver redirected nameserver connections"
echo "   app2's sidecar: $pulls2 pulls turned into pops, $acks2 acks from offset commits"
[ "$sends" -ge "$produce" ] || { echo "error: app's sidecar counted $sends sends, expected at least $produce" >&2; exit 1; }
passed "app's sidecar counted every send"
[ "$nameserver" -ge 1 ] || { echo "error: no connection to namesrv:9876 was redirected to app's sidecar" >&2; exit 1; }
passed "the application's connection to namesrv:9876 was redirected to its sidecar"
for v in "$pulls1" "$pulls2" "$acks1" "$acks2"; do
  [ "$v" -ge 1 ] || { echo "error: both pods' sidecars should have turned pulls into pops and acked (the group shares the messages)" >&2; exit 1; }
done
passed "both pods consumed through their sidecars' pull->pop translator"

# Every established TCP connection of a pod to the cluster (the control plane's 9876 and 18000,
# the brokers' 10911) must be owned by the sidecar's uid: /proc/net/tcp of the pod's namespace,
# read in its application container, lists each socket with its uid.
for pod in app app2; do
  dc exec -T "$pod" cat /proc/net/tcp | python3 "$here/pod_connections.py" "$pod"
done
passed "every connection from both pods to the cluster is their sidecar's"

echo "== Prometheus (observe profile): targets and the dashboard's queries"
prom="http://127.0.0.1:$PROMETHEUS_PORT"
python3 - "$prom" "$root/examples/grafana/rocketmesh.json" <<'EOF'
import json, sys, time, urllib.parse, urllib.request
prom, dashboard = sys.argv[1], sys.argv[2]

def get(path, **q):
    url = prom + path + ('?' + urllib.parse.urlencode(q) if q else '')
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)

deadline = time.time() + 60
while True:
    try:
        targets = get('/api/v1/targets')['data']['activeTargets']
        up = [t['scrapeUrl'] for t in targets if t['health'] == 'up']
        if len(targets) == 5 and len(up) == 5:
            break
        state = ['%s %s %s' % (t['scrapeUrl'], t['health'], t['lastError']) for t in targets]
    except OSError as e:
        state = [str(e)]
    if time.time() > deadline:
        sys.exit('Prometheus does not scrape all five rocketmesh processes: %s' % state)
    time.sleep(2)
print('   Prometheus scrapes %d targets: %s' % (len(up), ', '.join(sorted(up))))

def exprs(panels):
    for p in panels:
        yield from exprs(p.get('panels', []))
        for t in p.get('targets', []):
            yield p['title'], t['expr']

answered = empty = 0
for title, expr in exprs(json.load(open(dashboard))['panels']):
    q = expr.replace('$__rate_interval', '1m').replace('$sidecar', '.*').replace('$broker', '.*')
    try:
        r = get('/api/v1/query', query=q)
    except urllib.error.HTTPError as e:
        sys.exit('panel %r: Prometheus refused %r: %s' % (title, q, e.read().decode()))
    if r['status'] != 'success':
        sys.exit('panel %r: %r: %s' % (title, q, r))
    answered += 1
    empty += not r['data']['result']
print('   %d dashboard queries answered (%d without series yet)' % (answered, empty))
EOF
passed "Prometheus scrapes every rocketmesh process and answers every dashboard query"

finished=true
echo "== the Docker demo passed in $((SECONDS - started))s"
echo "docker-demo: $checks passed, 0 failed"
