#!/usr/bin/env bash
# A serve killed -9 under load: 16 HTTP clients (half the transfers across nodes) through a second
# serve, killed mid-run at a moment it holds prepared branches. The demo's serve (and the agents)
# finish whatever it left in doubt, and no cent is lost or created.
source "$(dirname "$0")/lib.sh"
plan 4
cluster_up

start_serve victim
victim=$serve_pid
victim_port=${serve_url##*:}
run_bg "$work/load-bench.log" env SHARDBANK_HTTP_PORT="$victim_port" "$bin" bench --config "$config" --http --clients 16 --duration 10 --cross-node 0.5 --accounts-per-node 20
loader=$bg_pid
wait_for 60 grep -q running "$work/load-bench.log"
sleep 1
# Freeze the victim (SIGSTOP) and look: when a branch is prepared, kill it right there, frozen;
# otherwise let it run a little and look again.
in_flight=""
for _ in $(seq 40); do
  kill -STOP "$victim"
  n=$(prepared_count) || n=""
  if [ -n "$n" ] && [ "$n" -gt 0 ]; then in_flight=$n; kill -9 "$victim"; break; fi
  kill -CONT "$victim"; sleep 0.2
done
kill -9 "$victim" 2>/dev/null; kill -CONT "$victim" 2>/dev/null; wait "$victim" 2>/dev/null
killed=$(date +%s)
[ -n "$in_flight" ] && ok "the serve was killed holding $in_flight prepared branch(es)" || bad "no prepared branch seen in the serve's 40 freezes under load" "$(tail -5 "$work/load-bench.log")"
# Only the dead serve wrote XA branches, so from now on they can only go away.
wait_for 30 none_prepared
n=$(prepared_count) && [ "$n" -eq 0 ] && ok "nothing left prepared $(( $(date +%s) - killed )) s after the kill" \
  || bad "prepared branches remain (or a node did not answer) $(( $(date +%s) - killed )) s after the kill" "$(nodes_sql 'XA RECOVER' 2>&1)"
wait "$loader"
summary=$(grep "ledger http" "$work/load-bench.log")
[ -n "$summary" ] && ! grep -q " 0 ops" <<<"$summary" && ok "load through a serve killed -9 mid-run: $(sed 's/.*(\(.*\)).*/\1/' <<<"$summary")" || bad "load through the killed serve" "$(tail -5 "$work/load-bench.log")"
out=$("$bin" ctl verify --config "$config" 2>&1) && ok "ctl verify clean after the serve died under load: $(tail -1 <<<"$out")" || bad "ctl verify after the serve died under load" "$out"
