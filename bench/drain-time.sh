#!/usr/bin/env bash
# A node drained under load. A cluster of its own (release build, demo up --etcd 1 --spare 1); node4
# joins (`ctl add-node`); ROWS accounts opened in a1 (node1) and as many in a2 (node2) and
# `bench --http` at 16 clients, half the transfers across nodes, with --timeline; CROSSED accounts
# are opened in a1 and each gets a deposit that takes it to a2 (a crossing: its history stays on
# node1). Then `ctl drain node1`: its ranges of both maps move away and the crossed accounts'
# history moves to their nodes. Prints the drain's total time, each of its moves (rows, freeze
# window), the accounts rehomed and how long that took, the bench's totals (errors by code) and
# from the timeline the ops/s before and during the drain and the worst second.
# Usage: bench/drain-time.sh [ROWS] [CROSSED] [GRACE]   (defaults 50000, 500, 5 s of --decision-grace)
set -euo pipefail
rows=${1:-50000} crossed=${2:-500} grace=${3:-5}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
start_cluster --etcd 1 --spare 1
out=$dir.out
mkdir -p "$out"
config=$dir/shardbank.json
api=$(python3 -c "import json; print(json.load(open('$dir/cluster.json'))['api']['url'])")
spare=$(python3 -c "import json; print([n['port'] for n in json.load(open('$dir/cluster.json'))['nodes'] if n['id'] == 'node4'][0])")
echo "$(machine); $(mariadbd --version | grep -oE 'Ver [^ ]+'); rows $rows, crossed $crossed, decision grace $grace s"
"$bin" ctl add-node node4 --host 127.0.0.1 --port "$spare" --config "$config" >/dev/null
# Long enough for two moves of the range and the rehoming (a guess); what outlasts it runs without load.
duration=$((150 + rows * 6 / 1000 + crossed / 4))
start_load "$rows" "$duration"
for i in $(seq 1 "$crossed"); do
  id=$(curl -s -m 10 -X POST "$api/v1/accounts" -H 'Content-Type: application/json' -H "Idempotency-Key: drain-open-$i-$$" \
         -d "{\"customer_name\":\"Crossed $i\",\"balance\":\"10.00\"}" | python3 -c "import json,sys; print(json.load(sys.stdin)['account_id'])")
  curl -s -m 10 -o /dev/null -X POST "$api/v1/accounts/$id/deposit" -H 'Content-Type: application/json' -H "Idempotency-Key: drain-cross-$i-$$" \
    -d '{"amount":"20000.00"}'
done
sleep 10
t0=$(date +%s.%N)
# Its progress lines on stderr, each with the time it came (the phases' durations).
"$bin" ctl drain node1 --config "$config" --decision-grace "$grace" --json >"$out/drain.json" \
  2> >(while IFS= read -r line; do echo "$(date +%s.%N) $line"; done >"$out/drain.err") || { sleep 1; echo "drain failed:"; cat "$out/drain.err"; exit 1; }
sleep 1
t1=$(date +%s.%N)
"$bin" ctl jobs --config "$config" --json >"$out/jobs.json"
wait "$loader"
grep -E "ops/s|errors" "$out/bench.log"
python3 - "$out" "$started" "$t0" "$t1" <<'PY'
import json, sys, statistics
out, started, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
text = open(out + "/drain.json").read()
drain = json.loads(text[text.index("{"):])
jobs = json.loads(open(out + "/jobs.json").read())
print(f"drain {drain['id']}: {drain['phase']} in {t1 - t0:.1f} s; history of {drain['rows']['copied']} account(s) rehomed")
for j in jobs:
    if j.get("parent") == drain["id"]:
        f = j.get("freeze", {})
        print(f"  move of {j['map']} range {j['range']} {j['from']} → {j['to']}: {j['rows']['copied']} rows copied, "
              f"freeze window {f.get('window_ms')} ms, {j['phase']}")
marks = []
for line in open(out + "/drain.err"):
    at, _, text = line.strip().partition(" ")
    if text.startswith("phase ") or text.startswith("moving "):
        marks.append((float(at), text))
previous = t0
for at, text in marks:
    print(f"  +{at - t0:6.1f} s (+{at - previous:5.1f}) {text}")
    previous = at
points = [json.loads(l) for l in open(out + "/timeline.jsonl") if l.strip()]
lo, hi = t0 - started, t1 - started
def mean_ops(a, b):
    sel = [p["ops"] for p in points if a <= p["t"] < b]
    return statistics.mean(sel) if sel else float("nan")
during = [p for p in points if lo <= p["t"] < hi]
print(f"ops/s before the drain {mean_ops(2, lo - 1):.0f}, during {statistics.mean(p['ops'] for p in during) if during else float('nan'):.0f}; "
      f"the load covered {min(hi, points[-1]['t'] if points else 0) - lo:.0f} s of the drain's {hi - lo:.0f}")
if during:
    worst = min(during, key=lambda p: p["ops"])
    print(f"worst second during the drain: t={worst['t']} {worst['ops']} ops, {worst['errors']} errors, p99 {worst['p99_us'] / 1000:.0f} ms; "
          f"errors during the drain: {sum(p['errors'] for p in during)}")
PY
echo "files: $out"
