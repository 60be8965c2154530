#!/usr/bin/env bash
# The ledger's TPC-B-like load against plain SQL, the figures of docs/BENCHMARKS.md ("Ledger").
# Usage: bench/ledger.sh [SECONDS] (default 15). Needs a release build; runs about 15 × SECONDS.
# One throw-away cluster (3 nodes, 1 etcd member, the service started by demo up) for all runs.
set -euo pipefail
duration="${1:-15}"
source "$(dirname "$0")/common.sh"
start_cluster --etcd 1
config="$dir/shardbank.json"
echo "$(machine); $(mariadbd --version | grep -oE 'Ver [^ ]+')"
run() { echo "--- bench $*"; "$bin" bench --config "$config" --duration "$duration" "$@" 2>/dev/null | grep -v "running"; }
run --clients 16 --cross-node 0 --only-node node1 --baseline   # same node, same clients: the 0.8× goal
run --clients 16 --cross-node 0 --only-node node1 --baseline
run --clients 16 --cross-node 0 --baseline                     # spread over three nodes
run --clients 16 --cross-node 0.5 --baseline                   # the 0.4× goal
run --clients 16 --cross-node 1 --xa-anchor                    # all across, against plain SQL + XA on node1/node2
run --clients 1 --cross-node 1 --xa-anchor
run --clients 16 --cross-node 0 --http
run --clients 16 --cross-node 0.5 --http
run --clients 64 --cross-node 0.5 --http
pid=$(python3 -c "import json; print(json.load(open('$dir/cluster.json'))['api']['pid'])")
echo "--- serve peak RSS after these runs: $(grep VmHWM /proc/"$pid"/status | awk '{print $2, $3}')"
"$bin" ctl verify --config "$config"
