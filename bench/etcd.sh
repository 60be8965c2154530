#!/usr/bin/env bash
# The etcd client's put and get latency next to `etcdctl check perf` on the same 3-member cluster.
# Usage: bench/etcd.sh [SECONDS] (default 20). Needs a release build. check perf itself runs 60 s.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
duration="${1:-20}"
bin="$(swift build -c release --show-bin-path)/shardbank"
[ -x "$bin" ] || swift build -c release --product shardbank
dir="$(mktemp -d /tmp/shardbank-bench.XXXXXX)"
trap '"$bin" demo down --dir "$dir" >/dev/null 2>&1 || true' EXIT
"$bin" demo up --dir "$dir" --etcd 3 >/dev/null
endpoints=$(python3 -c "import json; print(','.join(json.load(open('$dir/cluster.json'))['etcd']['endpoints']))")
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(etcd --version | head -1)"
for op in put get get-serializable; do
  for c in 1 16; do
    "$bin" bench etcd --config "$dir/shardbank.json" --operation "$op" --clients "$c" --duration "$duration"  2>/dev/null
  done
done
echo "--- etcdctl check perf --load=s (50 clients, 60 s)"
etcdctl --endpoints "$endpoints" check perf --load=s 2>&1 | tr "\r" "\n" | grep -oE "(PASS|FAIL).*"
