#!/usr/bin/env bash
# The API under a light HTTP client: wrk (C, one thread) posting cross-node transfers to `serve`,
# the figures of docs/BENCHMARKS.md ("HTTP with a light client").
# Usage: bench/http.sh [SECONDS] [MIX]   (default 15 s, MIX "transfers"; "tpcb" is bench's 80/10/10 mix)
# With URL=http://HOST:PORT set, runs against that running service (accounts are opened there)
# instead of starting a throw-away cluster (`demo up --etcd 1`, stopped on exit); SERVE_PID=PID then
# names its process for the CPU figures. Each run also prints the CPU time serve spent per request
# (user+system, from /proc/PID/stat) — less sensitive than req/s to other load on the machine.
set -euo pipefail
duration="${1:-15}"
mix="${2:-transfers}"
per_node="${PER_NODE:-100}"
source "$(dirname "$0")/common.sh"
command -v wrk >/dev/null || apt-get install -y -o DPkg::Lock::Timeout=300 wrk >/dev/null
if [ -z "${URL:-}" ]; then
  start_cluster --etcd 1
  URL=$(python3 -c "import json; print(json.load(open('$dir/cluster.json'))['api']['url'])")
  work="$dir"
  SERVE_PID=$(python3 -c "import json; print(json.load(open('$dir/cluster.json'))['api']['pid'])")
else
  work=$(mktemp -d /tmp/shardbank-http-XXXXXX)
  trap 'rm -rf "$work"' EXIT
fi
echo "$(machine); $(date -u '+%Y-%m-%d %H:%M UTC'); load: $(cut -d' ' -f1-3 /proc/loadavg)"
# Accounts in the middle of each node's first range (seed layout: node1 [0, 10000.01),
# node2 [10000.01, 50000.01), node3 from 50000.01): 0.01 transfers never move one.
python3 - "$URL" "$per_node" "$work/accounts.txt" <<'PY'
import json, sys, urllib.request, uuid
url, per_node, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
run = uuid.uuid4().hex[:8]
with open(out, "w") as f:
    for balance in ["5000.00", "20000.00", "60000.00"]:
        ids = []
        for i in range(per_node):
            body = json.dumps({"customer_name": f"wrk {i}", "balance": balance}).encode()
            req = urllib.request.Request(url + "/v1/accounts", data=body, method="POST",
                                         headers={"Content-Type": "application/json", "Idempotency-Key": f"open-{run}-{balance}-{i}"})
            ids.append(str(json.load(urllib.request.urlopen(req))["account_id"]))
        f.write(" ".join(ids) + "\n")
PY
lua="$(pwd)/bench/transfers.lua"
load() { cut -d' ' -f1-3 /proc/loadavg; }
ticks() { [ -n "${SERVE_PID:-}" ] && awk '{print $14 + $15}' "/proc/$SERVE_PID/stat" || echo 0; }
# wrk's output on stdin → the lines worth keeping, and serve's CPU per request since $1 (ticks).
summarise() {
  local before=$1 out; out=$(cat)
  echo "$out" | grep -E "Requests/sec|answers|non-2xx|p50|50%|99%|Non-2xx|Socket"
  local requests; requests=$(echo "$out" | grep -oE "^ +[0-9]+ requests" | grep -oE "[0-9]+")
  [ -n "${SERVE_PID:-}" ] && [ -n "$requests" ] && awk -v t=$(( $(ticks) - before )) -v r="$requests" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "serve CPU: %.1f s for %d requests = %.0f µs per request\n", t / hz, r, t / hz * 1e6 / r }'
  true
}
for c in 1 16; do
  echo "--- /healthz, $c connection(s), load $(load)"
  t=$(ticks); wrk -t1 -c"$c" -d"${duration}s" --latency "$URL/healthz" | summarise "$t"
done
for c in 1 16; do
  echo "--- POST /v1/transfers ($mix), $c connection(s), load $(load)"
  t=$(ticks); wrk -t1 -c"$c" -d"${duration}s" --timeout 10s -s "$lua" "$URL" -- "$work/accounts.txt" "w$RANDOM$RANDOM-c$c" "$mix" | summarise "$t"
done
echo "load after: $(load)"
[ -n "${dir:-}" ] && "$bin" ctl verify --config "$dir/shardbank.json" | tail -3
true
