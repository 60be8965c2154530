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
