# Shared set-up of the benchmark scripts: a release build and a throw-away local cluster.
# Usage (sourced): start_cluster DEMO-UP-ARGS…  → sets $bin and $dir; the cluster stops on exit.
# The binary: SHARDBANK_BIN if set, else the release build (built when missing: run
# `swift build -c release` first after a change).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="/opt/swift/usr/bin:$PATH"
bin="${SHARDBANK_BIN:-$(swift build -c release --show-bin-path)/shardbank}"
[ -x "$bin" ] || swift build -c release --product shardbank
start_cluster() {
  dir="/tmp/shardbank-bench-$$-$RANDOM"
  mkdir -p "$dir"
  trap '"$bin" demo down --dir "$dir" >/dev/null 2>&1 || true' EXIT
  "$bin" demo up --dir "$dir" "$@" >/dev/null 2>&1
}
machine() { echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"; }
# The load of the range-job benchmarks: ROWS accounts opened in a1 (node1) and as many in a2
# (node2), then `bench --http` at 16 clients, half the transfers across nodes, for SECONDS, with a
# timeline in $out/timeline.jsonl and its output in $out/bench.log. Returns once it runs; sets
# $loader (its pid) and $started (when it began, seconds since the epoch).
start_load() { # ROWS SECONDS (needs $config and $out)
  "$bin" bench --config "$config" --http --clients 16 --cross-node 0.5 --accounts-per-node "$1" --only-node node1,node2 \
    --duration "$2" --timeline "$out/timeline.jsonl" >"$out/bench.log" 2>&1 &
  loader=$!
  until grep -q running "$out/bench.log"; do
    kill -0 "$loader" 2>/dev/null || { echo "bench died:"; tail "$out/bench.log"; exit 1; }
    sleep 0.5
  done
  started=$(date +%s.%N)
}
