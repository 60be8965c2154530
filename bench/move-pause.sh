#!/usr/bin/env bash
# Range moves under load. A cluster of its own (release build, demo up --etcd 1); ROWS accounts opened
# in a1 (node1) and as many in a2 (node2); `bench --http` at 16 clients, half the transfers across
# nodes, with --timeline; once it runs, a1 moves node1 → node3 → node1 … MOVES times with `ctl move`.
# Prints per move the job record's figures (rows copied, copy rows/s, freeze lock wait, freeze window:
# from the freeze to the map naming the target), then p50/p99/max of the windows, the bench's totals
# (errors by code) and from the timeline the ops/s before, during and after the moves and the worst
# second during them.
# RANGE=d1 moves the directory range d1 (node1's third of the directory: the entries of the
# accounts whose id hashes into it, the opening decisions and key claims of the keys that do — the
# load claims a third of its keys there) instead of a1.
# Usage: [RANGE=a1|d1] bench/move-pause.sh [ROWS] [MOVES] [GRACE]   (defaults 50000, 10, and 5 s of --decision-grace)
set -euo pipefail
rows=${1:-50000} moves=${2:-10} grace=${3:-5} range=${RANGE:-a1}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
start_cluster --etcd 1
out=$dir.out
mkdir -p "$out"
config=$dir/shardbank.json
echo "$(machine); $(mariadbd --version | grep -oE 'Ver [^ ]+'); rows $rows, moves of $range $moves, decision grace $grace s"
# Long enough for the moves (a guess per move); the moves that outlast it run without load (reported).
duration=$((60 + moves * (30 + rows / 1000)))
start_load "$rows" "$duration"
sleep 15
to=node3
: >"$out/moves.txt"
for i in $(seq 1 "$moves"); do
  t0=$(date +%s.%N)
  "$bin" ctl move "$range" --to "$to" --config "$config" --decision-grace "$grace" --json >"$out/move-$i.json" 2>"$out/move-$i.err" || { echo "move $i failed:"; cat "$out/move-$i.err"; exit 1; }
  t1=$(date +%s.%N)
  echo "$i $to $t0 $t1" >>"$out/moves.txt"
  [ "$to" = node3 ] && to=node1 || to=node3
  sleep 5
done
moves_done=$(date +%s.%N)
wait "$loader"
grep -E "ops/s|errors" "$out/bench.log"
python3 - "$out" "$started" "$moves_done" <<'EOF'
import json, sys, statistics
out, started, done = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
moves = []
for line in open(out + "/moves.txt"):
    i, to, t0, t1 = line.split()
    text = open(f"{out}/move-{i}.json").read()
    job = json.loads(text[text.index("{"):])
    moves.append((int(i), to, float(t0) - started, float(t1) - started, job))
    f = job["freeze"]
    print(f"move {i:>2} → {to}: {job['rows']['copied']} rows copied, {job.get('rows_per_s') or 0:.0f} rows/s, "
          f"freeze lock wait {f.get('lock_wait_ms')} ms, window {f.get('window_ms')} ms (verify {f.get('verify_ms')} ms), "
          f"{float(t1) - float(t0):.1f} s in all (grace included)")
windows = sorted(m[4]["freeze"]["window_ms"] for m in moves)
waits = sorted(m[4]["freeze"]["lock_wait_ms"] for m in moves)
def pct(v, p): return v[min(len(v) - 1, max(0, round(p / 100 * len(v) + 0.5) - 1))]
print(f"freeze window ms: p50 {pct(windows, 50)}  p99 {pct(windows, 99)}  max {windows[-1]}   lock wait ms: p50 {pct(waits, 50)}  max {waits[-1]}")
print(f"copy rows/s: mean {statistics.mean(m[4].get('rows_per_s') or 0 for m in moves):.0f}")
points = [json.loads(l) for l in open(out + "/timeline.jsonl") if l.strip()]
last = points[-1]["t"] if points else 0
first_move, last_move = moves[0][2], moves[-1][3]
def mean_ops(lo, hi):
    sel = [p["ops"] for p in points if lo <= p["t"] < hi]
    return (statistics.mean(sel), len(sel)) if sel else (float("nan"), 0)
during_seconds = [p for p in points if any(m[2] <= p["t"] < m[3] for m in moves)]
print(f"ops/s before the moves {mean_ops(2, first_move - 1)[0]:.0f}, during {statistics.mean(p['ops'] for p in during_seconds) if during_seconds else float('nan'):.0f}, "
      f"after {mean_ops(last_move + 1, last)[0]:.0f} (over {mean_ops(last_move + 1, last)[1]} s)")
if during_seconds:
    worst = min(during_seconds, key=lambda p: p["ops"])
    slowest = max(during_seconds, key=lambda p: p["p99_us"])
    print(f"worst second during the moves: t={worst['t']} {worst['ops']} ops, {worst['errors']} errors, p99 {worst['p99_us'] / 1000:.0f} ms; "
          f"highest p99: t={slowest['t']} {slowest['p99_us'] / 1000:.0f} ms (max {slowest['max_us'] / 1000:.0f} ms)")
    print(f"errors during the moves: {sum(p['errors'] for p in during_seconds)}")
if last_move > last:
    print(f"note: the moves outlasted the load ({last_move:.0f} s > {last} s): raise the duration guess")
EOF
echo "files: $out"
