#!/usr/bin/env bash
# The etcd client's put and get latency next to `etcdctl check perf` on the same 3-member cluster.
# Usage: bench/etcd.sh [SECONDS] (default 20). Needs a release build. check perf itself runs 60 s.
set -euo pipefail
duration="${1:-20}"
source "$(dirname "$0")/common.sh"
start_cluster --etcd 3
endpoints=$(python3 -c "import json; print(','.join(json.load(open('$dir/cluster.json'))['etcd']['endpoints']))")
echo "$(machine); $(etcd --version | head -1)"
for op in put get get-serializable; do
  for c in 1 16; do
    "$bin" bench etcd --config "$dir/shardbank.json" --operation "$op" --clients "$c" --duration "$duration"  2>/dev/null
  done
done
echo "--- etcdctl check perf --load=s (50 clients, 60 s)"
etcdctl --endpoints "$endpoints" check perf --load=s 2>&1 | tr "\r" "\n" | grep -oE "(PASS|FAIL).*"
