#!/usr/bin/env bash
# A/B of two release binaries on the ledger's hot path: each on a cluster of its own (demo up --etcd
# 1), the same bench commands alternating between them, ROUNDS rounds. Written to measure what the
# capture triggers cost with no move running (BEFORE without them, AFTER with them; since then a mover
# installs them only for a move, and AFTER_SQL can install them: see docs/BENCHMARKS.md, "Schema v4"),
# and used for any before/after of the hot path.
# Usage: bench/capture-cost.sh BEFORE-BIN AFTER-BIN [SECONDS] [ROUNDS]   (defaults 15 and 3)
# CLIENTS=N: concurrent clients of every run (default 16).
# Per run: ops/s and, on the same-node run, node1's mariadbd CPU (utime+stime over the whole bench
# command, account set-up included) per operation. Then, when the AFTER cluster has capture triggers on
# account_info, they are dropped on every node and the same-node run repeated: what the rest costs.
# AFTER_SQL=FILE: SQL run as root on every node of the AFTER cluster before the rounds (e.g. a variant
# of the triggers, to measure it); BEFORE_SQL=FILE the same on the BEFORE cluster (e.g. one binary
# for both, BEFORE without an index: bench/time-index-none.sql).
set -euo pipefail
before=$1 after=$2 duration=${3:-15} rounds=${4:-3}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dir_before="/tmp/shardbank-capture-before-$$" dir_after="/tmp/shardbank-capture-after-$$"
trap '"$before" demo down --dir "$dir_before" >/dev/null 2>&1 || true; "$after" demo down --dir "$dir_after" >/dev/null 2>&1 || true' EXIT
"$before" demo up --dir "$dir_before" --etcd 1 >/dev/null 2>&1
"$after" demo up --dir "$dir_after" --etcd 1 >/dev/null 2>&1
for_each_node() { # DIR, SQL on stdin: as root over each node's socket
  local dir=$1 sql; sql=$(cat)
  python3 - "$dir" "$sql" <<'EOF'
import json, subprocess, sys
for n in json.load(open(sys.argv[1] + "/cluster.json"))["nodes"]:
    subprocess.run(["mariadb", "-S", n["socket"], "-uroot", n["database"]], input=sys.argv[2].encode(), check=True)
EOF
}
for_each_after_node() { for_each_node "$dir_after"; }
if [ -n "${AFTER_SQL:-}" ]; then for_each_after_node < "$AFTER_SQL"; echo "AFTER cluster: applied $AFTER_SQL"; fi
if [ -n "${BEFORE_SQL:-}" ]; then for_each_node "$dir_before" < "$BEFORE_SQL"; echo "BEFORE cluster: applied $BEFORE_SQL"; fi
field() { python3 -c "import json,sys; c=json.load(open('$1/cluster.json')); n=[x for x in c['nodes'] if x['id']=='node1'][0]; print(n['$2'])"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(mariadbd --version | grep -oE 'Ver [^ ]+')"
run() { # NAME BIN DIR BENCH-ARGS…
  local name=$1 bin=$2 dir=$3; shift 3
  local pid; pid=$(field "$dir" pid)
  local load; load=$(cut -d' ' -f1 /proc/loadavg)
  local t0; t0=$(cpu_ticks "$pid")
  local line; line=$("$bin" bench --config "$dir/shardbank.json" --duration "$duration" "$@" 2>/dev/null | grep -E "ops/s" | head -1)
  local t1; t1=$(cpu_ticks "$pid")
  local ops; ops=$(grep -oE "\(([0-9]+) ops" <<<"$line" | grep -oE "[0-9]+")
  printf "%-24s %-48s load %5s  %s  node1 mariadbd %s µs CPU/op\n" "$name" "$*" "$load" "$(cut -d: -f2 <<<"$line" | xargs)" \
    "$(awk -v t="$((t1 - t0))" -v n="$ops" 'BEGIN { printf "%.0f", t * 10000 / n }')"
}
clients=${CLIENTS:-16}
same=(--clients "$clients" --cross-node 0 --only-node node1)
half=(--clients "$clients" --cross-node 0.5)
for r in $(seq 1 "$rounds"); do
  if (( r % 2 )); then order=(before after); else order=(after before); fi
  for which in "${order[@]}"; do
    bin_var="$which" dir_var="dir_$which"
    run "round $r $which" "${!bin_var}" "${!dir_var}" "${same[@]}"
  done
  for which in "${order[@]}"; do
    bin_var="$which" dir_var="dir_$which"
    run "round $r $which" "${!bin_var}" "${!dir_var}" "${half[@]}"
  done
done
# Without the triggers of account_info (dropped on every node of the AFTER cluster), if it had any.
triggers=$(python3 -c "
import json, subprocess, sys
n = json.load(open('$dir_after/cluster.json'))['nodes'][0]
print(subprocess.run(['mariadb', '-S', n['socket'], '-uroot', '-N', n['database'], '-e',
      'SELECT COUNT(*) FROM information_schema.triggers WHERE trigger_schema = DATABASE()'], capture_output=True, text=True).stdout.strip())")
if [ "$triggers" = "0" ]; then "$after" ctl verify --config "$dir_after/shardbank.json" | tail -1; exit 0; fi
for_each_after_node <<<"DROP TRIGGER IF EXISTS account_info_capture_insert; DROP TRIGGER IF EXISTS account_info_capture_update; DROP TRIGGER IF EXISTS account_info_capture_delete;"
for r in 1 2; do
  run "index only $r" "$after" "$dir_after" "${same[@]}"
  run "index only $r: before" "$before" "$dir_before" "${same[@]}"
done
"$after" ctl verify --config "$dir_after/shardbank.json" | tail -1
