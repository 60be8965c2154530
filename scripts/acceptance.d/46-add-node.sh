#!/usr/bin/env bash
# A node joins the running cluster: `demo up --spare 1` (node4's agent waits for its registration),
# `ctl add-node node4` migrates it, registers it and makes it active once its agent beats; then a2
# moves onto it and the same `serve` process answers for a2's accounts from node4. Refused: a
# registered id, a registered node's address, an unreachable address.
source "$(dirname "$0")/lib.sh"
plan 10
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
