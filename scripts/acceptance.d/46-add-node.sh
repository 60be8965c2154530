#!/usr/bin/env bash
# A node joins the running cluster: `demo up --spare 1` (node4's agent waits for its registration),
# `ctl add-node node4` migrates it, registers it and makes it active once its agent beats; then a2
# moves onto it and the same `serve` process answers for a2's accounts from node4. Refused: a
# registered id, a registered node's address, an unreachable address. Then the accounts are
# rebalanced, and node1 is drained under 16 HTTP clients: it ends removed and empty, its agent exits.
source "$(dirname "$0")/lib.sh"
plan 15
cluster_up --spare 1

spare_port=$(cluster_json "[n['port'] for n in d['nodes'] if n['id'] == 'node4'][0]")
node1_port=$(cluster_json "[n['port'] for n in d['nodes'] if n['id'] == 'node1'][0]")
serve_pid=$(cluster_json "d['api']['pid']")

out=$("$bin" ctl add-node node1 --host 127.0.0.1 --port "$spare_port" --config "$config" 2>&1); st=$?
[ $st -ne 0 ] && grep -q "registered already" <<<"$out" && ok "a registered id is refused" || bad "registered id" "$out"
out=$("$bin" ctl add-node node9 --host 127.0.0.1 --port "$node1_port" --config "$config" 2>&1); st=$?
[ $st -ne 0 ] && grep -q "is node node1 already" <<<"$out" && ok "the address of a registered node is refused: $(tail -1 <<<"$out" | cut -c1-120)" || bad "a registered node's address" "$out"
out=$("$bin" ctl add-node node9 --host 127.0.0.1 --port 1 --config "$config" 2>&1); st=$?
[ $st -ne 0 ] && grep -q "cannot connect to node9" <<<"$out" && ok "an unreachable address is refused" || bad "unreachable address" "$out"

started=$(date +%s%N)
out=$("$bin" ctl add-node node4 --host 127.0.0.1 --port "$spare_port" --config "$config" 2>&1) \
  && "$bin" ctl status --config "$config" --json | json "[n['state'] for n in d['nodes'] if n['id'] == 'node4'][0]" | grep -qx active \
  && ok "ctl add-node node4: active in $(( ($(date +%s%N) - started) / 1000000 )) ms (its agent beat healthy)" || bad "add-node node4" "$out"

out=$("$bin" ctl move a2 --to node4 --config "$config" --decision-grace 5 2>&1) && ok "a2 moved onto node4: $(grep '^job .*done' <<<"$out")" || bad "move a2 to node4" "$out"
code=$(post /v1/accounts '{"customer_name":"On node4","balance":"20000.00"}' "open-on-node4-$$")
[ "$code" = 201 ] && grep -Eq '"node" *: *"node4"' "$BODY" && kill -0 "$serve_pid" \
  && ok "the same serve (pid $serve_pid) opens an a2 account on node4" || bad "an account on node4: $code" "$(cat "$BODY")"
out=$("$bin" ctl verify --config "$config" 2>&1) && ok "ctl verify clean with node4: $(tail -1 <<<"$out")" || bad "ctl verify" "$out"

# Rebalance: most accounts on node1 (30 new ones in a1); the plan splits and moves until every node
# is within 30 % of the mean (or says why not).
for i in $(seq 1 30); do post /v1/accounts "{\"customer_name\":\"Rebalance $i\",\"balance\":\"$i.00\"}" "rebalance-open-$i-$$" >/dev/null; done
sigma() { "$bin" ctl verify --config "$config" 2>&1 | sed -n 's/.*Σ balances \([0-9.]*\) = .*/\1/p'; }
before=$(sigma)
maps_before=$("$bin" ctl status --config "$config" --json | json "[r['id'] for m in d['maps'] for r in m['ranges']]")
out=$("$bin" ctl rebalance --dry-run --tolerance 30 --max-range-rows 1000 --config "$config" 2>&1)
grep -q "rows per node now" <<<"$out" && grep -Eq "^1\. (split|move)" <<<"$out" \
  && [ "$("$bin" ctl status --config "$config" --json | json "[r['id'] for m in d['maps'] for r in m['ranges']]")" = "$maps_before" ] \
  && ok "ctl rebalance --dry-run prints a plan and changes nothing: $(grep -E '^[0-9]+\.' <<<"$out" | head -3 | tr '\n' ' ')" || bad "rebalance --dry-run" "$out"
out=$("$bin" ctl rebalance --tolerance 30 --max-range-rows 1000 --config "$config" 2>&1) && grep -q "done in" <<<"$out" \
  && ok "ctl rebalance: $(grep '^rebalance' <<<"$out" | cut -c1-160)" || bad "ctl rebalance" "$out"
out=$("$bin" ctl verify --config "$config" 2>&1) && [ "$(sigma)" = "$before" ] \
  && ok "ctl verify clean after the rebalance, Σ balances unchanged ($before)" || bad "verify after the rebalance" "$out"

# Drain node1 under load: its ranges of both maps move away, the history of accounts that left it by
# a crossing moves to their nodes, it is marked removed, its agent exits.
before=$(sigma)
agent1=$(cluster_json "[n.get('agent_pid') for n in d['nodes'] if n['id'] == 'node1'][0]")
run_bg "$work/load-drain.log" "$bin" bench --config "$config" --http --clients 16 --duration 20 --cross-node 0.5 --accounts-per-node 10 \
  --acknowledged "$work/acked-drain.txt"
loader=$bg_pid
wait_for 60 grep -q running "$work/load-drain.log"
sleep 2
started=$(date +%s)
out=$("$bin" ctl drain node1 --decision-grace 5 --config "$config" 2>&1) && grep -q "node1 is removed" <<<"$out" \
  && "$bin" ctl status --config "$config" --json | json "[n['state'] for n in d['nodes'] if n['id'] == 'node1'][0]" | grep -qx removed \
  && ok "ctl drain node1 under load: removed in $(( $(date +%s) - started )) s — $(grep '^job .*done' <<<"$out" | cut -c1-140)" || bad "ctl drain node1" "$out"
wait "$loader"
summary=$(grep "ledger http" "$work/load-drain.log")
# The bench's small accounts may run dry (insufficient_funds is the bank's answer, not a fault).
others=$(grep -a "^ *errors " "$work/load-drain.log" | grep -v "errors insufficient_funds:" || true)
[ -n "$summary" ] && [ -z "$others" ] && kill -0 "$serve_pid" \
  && ok "no client error but insufficient funds while node1 drained, the same serve answers: $(sed 's/.*(\(.*\)).*/\1/' <<<"$summary")" || bad "client errors during the drain" "$(tail -8 "$work/load-drain.log")"
n1=$(cluster_json "[f\"{n['port']} {n['password']}\" for n in d['nodes'] if n['id'] == 'node1'][0]")
left=$(timeout 30 mariadb --connect-timeout=10 -N -h127.0.0.1 -P"${n1% *}" -ubank -p"${n1#* }" bank_db -e \
  "SELECT (SELECT COUNT(*) FROM account_info) + (SELECT COUNT(*) FROM account_directory) + (SELECT COUNT(*) FROM journal) + (SELECT COUNT(*) FROM transfers) + (SELECT COUNT(*) FROM range_ownership)" 2>&1)
gone=no; for _ in $(seq 1 20); do [ -z "$(alive "$agent1")" ] && { gone=yes; break; }; sleep 0.5; done
[ "$left" = 0 ] && [ "$gone" = yes ] && ok "node1 holds no row, and its agent (pid $agent1) exited" || bad "node1 after the drain: $left rows, agent gone: $gone"
out=$("$bin" ctl verify --config "$config" 2>&1) && ok "ctl verify clean after the drain: $(tail -1 <<<"$out")" || bad "verify after the drain" "$out"
out=$(acknowledged_committed "$work/acked-drain.txt" 2>&1) && ok "every transfer acknowledged during the drain is committed: $out" || bad "acknowledged transfers after the drain" "$out"
