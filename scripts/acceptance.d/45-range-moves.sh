#!/usr/bin/env bash
# Online range moves with the CLI. Under 16 HTTP clients (half the transfers across nodes) a1 moves
# node1 → node3 → node1 → node3 → node1, then directory range d2 node2 → node1 → node2: no client
# error, `ctl verify` clean. Then, with no load:
# a `ctl move` killed -9 while copying is resumed by `ctl jobs resume`; one killed -9 while the
# range is frozen is rolled forward by the demo's serve (writes to the range wait, then go to the new
# node); one killed while catching up is undone by `ctl jobs cancel`. Bad input is refused.
source "$(dirname "$0")/lib.sh"
plan 18
cluster_up

owner() { "$bin" ctl status --config "$config" --json | json "[r['node'] for m in d['maps'] if m['name'] == 'accounts' for r in m['ranges'] if r['id'] == '$1'][0]"; }
job_of() { sed -n 's/^job \(job-[0-9a-f-]*\): moving.*/\1/p' "$1" | head -1; }
# `ctl move a1 --to NODE` held in PHASE (SHARDBANK_TEST_MOVE_HOLD_AT), then killed -9; sets $job.
killed_move() { # phase node
  run_bg "$work/move-$1.log" env SHARDBANK_TEST_MOVE_HOLD_AT="$1" "$bin" ctl move a1 --to "$2" --config "$config"
  local mover=$bg_pid
  wait_for 60 grep -q "holding at $1" "$work/move-$1.log"
  kill -9 "$mover"; wait "$mover" 2>/dev/null
  job=$(job_of "$work/move-$1.log")
}

# Four moves under load.
run_bg "$work/load.log" "$bin" bench --config "$config" --http --clients 16 --duration 40 --cross-node 0.5 --accounts-per-node 20 \
  --acknowledged "$work/acked.txt"
loader=$bg_pid
wait_for 60 grep -q running "$work/load.log"
sleep 2
moved=0; to=node3; outs=""
for i in 1 2 3 4; do
  if out=$("$bin" ctl move a1 --to "$to" --config "$config" 2>&1) && [ "$(owner a1)" = "$to" ]; then
    moved=$((moved + 1)); outs+="$(grep '^job .*done' <<<"$out")"$'\n'
  else
    outs+="move $i to $to failed: $out"$'\n'
  fi
  [ "$to" = node3 ] && to=node1 || to=node3
  sleep 2
done
[ "$moved" -eq 4 ] && ok "four moves of a1 under load: $(grep -o 'window [0-9?]* ms' <<<"$outs" | tr '\n' ' ')" || bad "moves under load ($moved of 4)" "$outs"
wait "$loader"
summary=$(grep "ledger http" "$work/load.log")
if [ -n "$summary" ] && grep -q " 0 errors" <<<"$summary"; then
  ok "no client error while a1 moved four times: $(sed 's/.*(\(.*\)).*/\1/' <<<"$summary")"
else
  bad "client errors during the moves" "$(tail -8 "$work/load.log")"
fi
out=$("$bin" ctl verify --config "$config" 2>&1) && ok "ctl verify clean after four moves under load: $(tail -1 <<<"$out")" || bad "ctl verify after the moves" "$out"

# A directory range there and back under load: its entries and the openings keyed into it.
downer() { "$bin" ctl status --config "$config" --json | json "[r['node'] for m in d['maps'] if m['name'] == 'directory' for r in m['ranges'] if r['id'] == '$1'][0]"; }
run_bg "$work/load-d.log" "$bin" bench --config "$config" --http --clients 16 --duration 20 --cross-node 0.5 --accounts-per-node 20 \
  --acknowledged "$work/acked-d.txt"
loader=$bg_pid
wait_for 60 grep -q running "$work/load-d.log"
sleep 2
outs=""
out1=$("$bin" ctl move d2 --to node1 --config "$config" 2>&1) && [ "$(downer d2)" = node1 ] \
  && out2=$("$bin" ctl move d2 --to node2 --config "$config" 2>&1) && [ "$(downer d2)" = node2 ] \
  && ok "directory range d2 moved node2 → node1 → node2 under load: $(grep -ho 'window [0-9?]* ms' <<<"$out1$out2" | tr '\n' ' ')" \
  || bad "directory moves under load" "$out1 $out2"
wait "$loader"
summary=$(grep "ledger http" "$work/load-d.log")
out=$("$bin" ctl verify --config "$config" 2>&1)
[ $? -eq 0 ] && [ -n "$summary" ] && grep -q " 0 errors" <<<"$summary" \
  && ok "no client error while d2 moved, ctl verify clean: $(tail -1 <<<"$out")" || bad "client errors or verify after the directory moves" "$summary $out $(tail -5 "$work/load-d.log")"
out=$(cat "$work/acked.txt" "$work/acked-d.txt" >"$work/acked-all.txt" && acknowledged_committed "$work/acked-all.txt" 2>&1) \
  && ok "every transfer acknowledged during the six moves is committed: $out" || bad "acknowledged transfers after the moves" "$out"
sigma() { "$bin" ctl verify --config "$config" 2>&1 | sed -n 's/.*Σ balances \([0-9.]*\) = .*/\1/p'; }
before=$(sigma)

# Killed -9 while copying, resumed.
killed_move copying node2
out=$("$bin" ctl jobs resume "$job" --config "$config" 2>&1) && [ "$(owner a1)" = node2 ] \
  && ok "ctl move killed -9 while copying, resumed: $(grep '^job .*done' <<<"$out")" || bad "resume after a kill in copying" "$out"

# Killed -9 while frozen: the demo's serve rolls the move forward (its move supervisor takes up a job
# whose runner died while its range cannot be written). A write meanwhile waits for the switch (or,
# when the wait runs out first, answers 503 range_moving and its retry goes through).
killed_move verified node3
killed_at=$(date +%s%N)
account=$(nodes_sql "SELECT a.account_id FROM account_info a JOIN range_ownership o ON o.map_name = 'accounts' AND o.range_id = a.balance_range WHERE a.balance_range = 'a1' AND o.state = 'frozen' AND a.balance >= 1 LIMIT 1" | head -1)
code=$(post "/v1/accounts/$account/withdraw" '{"amount":"0.01"}' "frozen-wd-$$")
if { [ "$code" = 200 ] && grep -q node3 "$BODY"; } || { [ "$code" = 503 ] && grep -q range_moving "$BODY"; }; then
  ok "a write to the frozen range waited for the switch: $code"
else
  bad "write while frozen: $code" "$(cat "$BODY")"
fi
owner_is() { [ "$(owner "$1")" = "$2" ]; }
job_done() { "$bin" ctl jobs show "$1" --config "$config" 2>/dev/null | grep -q '"phase" : "done"'; }
wait_for 30 owner_is a1 node3
owner_is a1 node3 && ok "serve rolled forward the move killed -9 while frozen: the map names node3 $(( ($(date +%s%N) - killed_at) / 1000000 )) ms after the kill" \
  || bad "roll-forward after a kill while frozen" "$("$bin" ctl jobs show "$job" --config "$config" 2>&1)"
# serve finishes the job's cleaning (its decision grace is 30 s), then the range is free for the next job.
wait_for 90 job_done "$job"
out=$("$bin" ctl jobs resume "$job" --config "$config" 2>&1); st=$?
[ $st -ne 0 ] && grep -q "has ended" <<<"$out" && ok "resuming a finished job is refused: $(tail -1 <<<"$out" | cut -c1-100)" || bad "resume of a finished job" "$out"
code=$(post "/v1/accounts/$account/withdraw" '{"amount":"0.01"}' "frozen-wd-$$")
{ [ "$code" = 200 ] || [ "$code" = 201 ]; } && grep -q node3 "$BODY" && ok "the same request with the same key, after the switch: $code on node3" || bad "retry after the switch: $code" "$(cat "$BODY")"

# Killed while copying, cancelled.
killed_move catching_up node1
out=$("$bin" ctl jobs cancel "$job" --config "$config" 2>&1) && [ "$(owner a1)" = node3 ] \
  && ok "ctl move killed -9 while catching up, cancelled: $out" || bad "cancel after a kill" "$out"
left=$(nodes_sql "SELECT COUNT(*) FROM account_info WHERE balance_range = 'a1'" | paste -sd' ')
[ "$(tr ' ' '\n' <<<"$left" | sed -n 1p)" = 0 ] && ok "node1 keeps no copy of a1 after the cancel (rows per node: $left)" || bad "copies left after the cancel" "$left"
out=$("$bin" ctl jobs --config "$config" 2>&1) && [ "$(grep -c ' done ' <<<"$out")" -ge 6 ] && grep -q cancelled <<<"$out" \
  && ok "ctl jobs lists the moves ($(grep -c ' done ' <<<"$out") done, 1 cancelled)" || bad "ctl jobs" "$out"

out=$("$bin" ctl verify --config "$config" 2>&1) && ok "ctl verify clean after the drills: $(tail -1 <<<"$out")" || bad "ctl verify after the drills" "$out"
expected=$(python3 -c "from decimal import Decimal; print(Decimal('$before') - Decimal('0.01'))")
[ "$(sigma)" = "$expected" ] && ok "Σ balances across the drills: $before less the one withdrawal of 0.01" || bad "Σ balances: $before → $(sigma), expected $expected"

# Bad input.
out=$("$bin" ctl move a9 --to node2 --config "$config" 2>&1); st=$?
[ $st -ne 0 ] && grep -q "known: a1, a2, a3" <<<"$out" && ok "an unknown range is refused, naming the known ones" || bad "unknown range" "$out"
out=$("$bin" ctl move a1 --to node3 --config "$config" 2>&1); st=$?
[ $st -ne 0 ] && grep -q "on node3 already" <<<"$out" && ok "a move to the owner is refused" || bad "move to the owner" "$out"
