#!/usr/bin/env bash
# The MariaDB driver against sysbench oltp_point_select on the same node, in the same run, at 1 and
# 4 connections. Usage: bench/point-select.sh [SECONDS] (default 20). Needs a release build.
set -euo pipefail
duration="${1:-20}"
table_size="${TABLE_SIZE:-100000}"
source "$(dirname "$0")/common.sh"
start_cluster --etcd 1
read -r port password < <(python3 -c "import json; n=json.load(open('$dir/cluster.json'))['nodes'][0]; print(n['port'], n['password'])")
sb=(sysbench oltp_point_select --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$port" --mysql-user=bank
    --mysql-password="$password" --mysql-db=bank_db --tables=1 --table-size="$table_size" --percentile=99)
"${sb[@]}" prepare >/dev/null
"$bin" bench point-select --config "$dir/shardbank.json" --connections 1 --duration 3 --table-size "$table_size" --json >/dev/null # warm-up

echo "$(machine); mariadbd $(mariadbd --version | awk '{print $3}')"
printf '%-12s %14s %14s %8s %12s %12s\n' connections sysbench_qps shardbank_qps ratio sb_p99_ms sbank_p99_us
for c in 1 4; do
  out=$("${sb[@]}" --threads="$c" --time="$duration" run)
  sq=$(grep -oP 'queries:\s+\d+\s+\(\K[0-9.]+' <<<"$out")
  sp=$(grep -oP '99th percentile:\s+\K[0-9.]+' <<<"$out")
  js=$("$bin" bench point-select --config "$dir/shardbank.json" --connections "$c" --duration "$duration" --table-size "$table_size" --json)
  oq=$(python3 -c "import json,sys; print(round(json.loads(sys.argv[1])['throughput']))" "$js")
  op=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['p99'])" "$js")
  printf '%-12s %14.0f %14s %8.2f %12s %12s\n' "$c" "$sq" "$oq" "$(python3 -c "print($oq/$sq)")" "$sp" "$op"
done
