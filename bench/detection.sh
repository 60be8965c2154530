#!/usr/bin/env bash
# How fast a dead node is known, and what heartbeats cost etcd: the figures of docs/BENCHMARKS.md
# ("Health"). Usage: bench/detection.sh [KILLS] (default 12). Needs a release build.
# One throw-away cluster (3 nodes, 3 etcd members, agents with the defaults: 1 s beats, TTL 3 s, 2
# failed checks, and the service). Each round kills one node's mariadbd with -9, times until the
# service's health view says "down", times a request for an account on that node (the fail-fast
# answer), restarts the node and times until it is "healthy" again.
set -euo pipefail
kills="${1:-12}"
source "$(dirname "$0")/common.sh"
start_cluster --etcd 3
config="$dir/shardbank.json"
api=$(python3 -c "import json; print(json.load(open('$dir/cluster.json'))['api']['url'])")
endpoints=$(python3 -c "import json; print(','.join(json.load(open('$dir/cluster.json'))['etcd']['endpoints']))")
echo "$(machine)"
declare -A account
for pair in node1:500.00 node2:20000.00 node3:70000.00; do
  account[${pair%%:*}]=$(curl -s -X POST "$api/v1/accounts" -H 'Content-Type: application/json' -d "{\"customer_name\":\"probe\",\"balance\":\"${pair#*:}\"}" |
    python3 -c "import json,sys; print(json.load(sys.stdin)['account_id'])")
done
state() { curl -s "$api/v1/cluster/nodes/$1/health" | python3 -c "import json,sys; print(json.load(sys.stdin)['state'])"; }
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
detect=(); failfast=(); recover=()
for i in $(seq "$kills"); do
  node="node$(( (i - 1) % 3 + 1 ))"
  sleep 1.$(( RANDOM % 10 ))  # land the kill anywhere in the beat
  t0=$(date +%s%N)
  "$bin" demo kill --dir "$dir" "$node" >/dev/null
  until [ "$(state "$node")" = down ]; do sleep 0.01; done
  detect+=("$(ms_since "$t0")")
  failfast+=("$(curl -s -o /dev/null -w '%{time_total}' "$api/v1/accounts/${account[$node]}")")
  "$bin" demo restart --dir "$dir" "$node" >/dev/null
  t1=$(date +%s%N)
  until [ "$(state "$node")" = healthy ]; do sleep 0.01; done
  recover+=("$(ms_since "$t1")")
  echo "kill $i ($node): down after ${detect[-1]} ms; fail-fast answer ${failfast[-1]} s; healthy ${recover[-1]} ms after the restart returned"
done
python3 - "${detect[*]}" "${failfast[*]}" "${recover[*]}" <<'PY'
import sys
def stats(name, xs, unit):
    xs = sorted(xs); n = len(xs)
    pick = lambda q: xs[min(n - 1, int(q * n))]
    print(f"{name}: n={n} p50 {pick(0.5):g} {unit}  p99 {pick(0.99):g} {unit}  max {xs[-1]:g} {unit}")
stats("detection (kill -9 → down in serve)", [int(x) for x in sys.argv[1].split()], "ms")
stats("fail-fast answer (503 node_unavailable)", [round(float(x) * 1000, 2) for x in sys.argv[2].split()], "ms")
stats("recovery (restart done → healthy)", [int(x) for x in sys.argv[3].split()], "ms")
PY
echo "--- heartbeat cost in etcd over 10 s (3 agents; the service and the agents only)"
rev() { etcdctl --endpoints "$endpoints" get /shardbank/cluster/info -w json | python3 -c "import json,sys; print(json.load(sys.stdin)['header']['revision'])"; }
r0=$(rev); sleep 10; r1=$(rev)
bytes=$(etcdctl --endpoints "$endpoints" get /shardbank/node/node1/heartbeat --print-value-only | wc -c)
echo "revisions: $(( r1 - r0 )) in 10 s = $(( (r1 - r0) / 3 )) per node per 10 s; one beat's value: $bytes bytes (+ the 25-byte key)"
