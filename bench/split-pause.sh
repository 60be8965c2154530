#!/usr/bin/env bash
# Range splits under load. A cluster of its own (release build, demo up --etcd 1); ROWS accounts opened
# in a1 (node1) and as many in a2 (node2); `bench --http` at 16 clients, half the transfers across
# nodes, with --timeline; once it runs, a1 is split at its median SPLITS times with `ctl split` (a1
# keeps the lower half each time: ROWS, ROWS/2, … rows). Prints per split the job record's figures
# (rows looked at, the narrowing's lock wait and how long it held the old range's row — the time a
# write to the range can wait), the bench's totals (errors) and from the timeline the ops/s before,
# during and after the splits and the worst second during them.
# Usage: bench/split-pause.sh [ROWS] [SPLITS]   (defaults 50000, 5)
set -euo pipefail
rows=${1:-50000} splits=${2:-5}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
start_cluster --etcd 1
out=$dir.out
mkdir -p "$out"
config=$dir/shardbank.json
echo "$(machine); $(mariadbd --version | grep -oE 'Ver [^ ]+'); rows $rows, splits $splits"
duration=$((60 + splits * 15))
start_load "$rows" "$duration"
sleep 15
: >"$out/splits.txt"
for i in $(seq 1 "$splits"); do
  t0=$(date +%s.%N)
  "$bin" ctl split a1 --config "$config" --json >"$out/split-$i.json" 2>"$out/split-$i.err" || { echo "split $i failed:"; cat "$out/split-$i.err"; exit 1; }
  t1=$(date +%s.%N)
  echo "$i $t0 $t1" >>"$out/splits.txt"
  sleep 5
done
wait "$loader"
grep -E "ops/s|errors" "$out/bench.log"
python3 - "$out" "$started" <<'PY'
import json, sys, statistics
out, started = sys.argv[1], float(sys.argv[2])
splits = []
for line in open(out + "/splits.txt"):
    i, t0, t1 = line.split()
    text = open(f"{out}/split-{i}.json").read()
    job = json.loads(text[text.index("{"):])
    splits.append((float(t0) - started, float(t1) - started, job))
    f = job["freeze"]
    print(f"split {i}: {job['range']} at {job['split_at'] / 100:.2f} → {job['new_range']}, {job['rows']['copied']} rows looked at, "
          f"narrowing lock wait {f.get('lock_wait_ms')} ms, held {f.get('window_ms')} ms, {float(t1) - float(t0):.1f} s in all")
held = sorted(s[2]["freeze"]["window_ms"] for s in splits)
waits = sorted(s[2]["freeze"]["lock_wait_ms"] for s in splits)
print(f"narrowing held ms: p50 {held[len(held) // 2]}  max {held[-1]}   lock wait ms: p50 {waits[len(waits) // 2]}  max {waits[-1]}")
points = [json.loads(l) for l in open(out + "/timeline.jsonl") if l.strip()]
last = points[-1]["t"] if points else 0
first, final = splits[0][0], splits[-1][1]
def mean_ops(lo, hi):
    sel = [p["ops"] for p in points if lo <= p["t"] < hi]
    return statistics.mean(sel) if sel else float("nan")
during = [p for p in points if any(s[0] <= p["t"] < s[1] + 1 for s in splits)]
print(f"ops/s before the splits {mean_ops(2, first - 1):.0f}, during {statistics.mean(p['ops'] for p in during) if during else float('nan'):.0f}, after {mean_ops(final + 1, last):.0f}")
if during:
    worst = min(during, key=lambda p: p["ops"])
    slowest = max(during, key=lambda p: p["p99_us"])
    print(f"worst second during the splits: t={worst['t']} {worst['ops']} ops, {worst['errors']} errors, p99 {worst['p99_us'] / 1000:.0f} ms; "
          f"highest p99 {slowest['p99_us'] / 1000:.0f} ms (max {slowest['max_us'] / 1000:.0f} ms)")
    print(f"errors during the splits: {sum(p['errors'] for p in during)}")
PY
echo "files: $out"
