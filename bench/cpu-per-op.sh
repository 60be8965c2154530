#!/usr/bin/env bash
# CPU time and context switches per operation of the `shardbank bench` process, in a 10 s window of
# each phase (the ledger's run, then --xa-anchor's), by `perf stat -p` (Debian linux-perf).
# Usage: bench/cpu-per-op.sh CONFIG BENCH-ARGS…   e.g. bench/cpu-per-op.sh D/shardbank.json --clients 16 --cross-node 1 --xa-anchor
# The bench runs 20 s per phase; ops per window are estimated from the phase's ops/s.
set -euo pipefail
config=$1; shift
source "$(dirname "$0")/common.sh"
command -v perf >/dev/null || apt-get install -y -o DPkg::Lock::Timeout=300 linux-perf >/dev/null
out=$(mktemp -d /tmp/shardbank-cpu-XXXXXX)
"$bin" bench --config "$config" --duration 20 "$@" > "$out/summary" 2> "$out/progress" & pid=$!
window() { perf stat -e task-clock,context-switches -p "$pid" -o "$out/$1" -- sleep 10; }
until grep -qs running "$out/progress"; do sleep 0.3; done; sleep 3; window ledger
if [[ " $* " == *" --xa-anchor "* ]]; then
  until grep -qs "anchor:" "$out/progress"; do sleep 0.3; done
  until [ "$(grep -c running "$out/progress")" -gt 25 ]; do sleep 0.3; done; sleep 2; window anchor
fi
wait "$pid"
echo "load $(cut -d' ' -f1-3 /proc/loadavg)"; grep -v "^ratio" "$out/summary"
for phase in ledger anchor; do
  [ -f "$out/$phase" ] || continue
  ms=$(awk '/task-clock/ {gsub(",", "", $1); print $1}' "$out/$phase")
  cs=$(awk '/context-switches/ {gsub(",", "", $1); print $1}' "$out/$phase")
  ops=$(grep "^$phase" "$out/summary" | grep -oE ": [0-9]+ ops/s" | grep -oE "[0-9]+")
  awk -v ms="$ms" -v cs="$cs" -v ops="$ops" -v p="$phase" 'BEGIN { printf "%s: %.0f µs CPU per op, %.1f context switches per op (10 s at %d ops/s)\n", p, ms * 1000 / (ops * 10), cs / (ops * 10), ops }'
done
rm -rf "$out"
